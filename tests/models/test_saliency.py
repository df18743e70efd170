"""Grad-CAM and occlusion: every registry backbone gives a map; a model that reads a region points there."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medfake.core.errors import UserError
from medfake.models import saliency
from medfake.models.detector import build_detector
from medfake.models.registry import list_backbones
from medfake.training.localisation import Truth, localisation_metrics

SIZE = 32
BLOB = 10.0       # the "tamper": a bright 3×3 spot on uniform 0..1 noise
RADIUS = 4.0


def _map_size(backbone) -> int:
    """The smallest size whose last block is at least 2×2 (a 1×1 block gives a constant map)."""
    return {"InceptionV3": 107}.get(backbone.name, max(backbone.min_size, 64))


@pytest.mark.slow
@pytest.mark.parametrize("backbone", list_backbones(), ids=lambda b: b.name)
def test_every_backbone_gives_a_map_of_the_input_size(backbone):
    import keras

    size = _map_size(backbone)
    keras.utils.set_random_seed(7)  # a wide, seeded head: a tiny random one can be all-dead (a zero gradient)
    detector = build_detector(backbone.name, size, weights=None, head_units=(64, 32))
    if backbone.cam_layer:
        assert backbone.cam_layer in {layer.name for layer in detector.get_layer("backbone").layers}
    x = np.random.default_rng(0).uniform(-1000, 400, (2, size, size, 1)).astype(np.float32)
    signed = saliency.grad_cam(detector, x, positive=False)
    assert signed.shape == (2, size, size)
    assert np.all(np.isfinite(signed))
    assert signed[0].std() > 0  # random weights: the ReLU'd map may be all zero, the signed one varies
    assert np.all(saliency.grad_cam(detector, x) >= 0)


def test_detector_with_a_pooled_tail_gives_a_varying_map():
    """VGG19's Grad-CAM layer sits before its last max-pool: the tail between them is replayed."""
    detector = build_detector("VGG19", SIZE, weights=None, head_units=(8, 4))
    split = saliency.cam_model(detector)
    assert split.layer == "block5_conv4"
    x = np.random.default_rng(1).uniform(-1000, 400, (3, SIZE, SIZE, 1)).astype(np.float32)
    maps = saliency.grad_cam(split, x, batch_size=2, positive=False)
    assert maps.shape == (3, SIZE, SIZE)
    assert maps[0].std() > 0


def _blob_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise slices with a bright spot at a random (x, y) each; returns images (n,S,S,1) and xy (n,2)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 1.0, (n, SIZE, SIZE, 1)).astype(np.float32)
    xy = rng.integers(4, SIZE - 4, (n, 2))
    for image, (x, y) in zip(images, xy):
        image[y - 1:y + 2, x - 1:x + 2, 0] = BLOB
    return images, xy.astype(np.float64)


def _one_feature_model(weight: float, bias: float) -> keras.Model:
    """x → 1×1 conv (weight·x + bias, ReLU) = "features" → global mean → sigmoid: reads what the feature sees."""
    inputs = keras.Input((SIZE, SIZE, 1))
    features = keras.layers.Conv2D(1, 1, activation="relu", name="features")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    output = keras.layers.Dense(1, activation="sigmoid", name="probability")(pooled)
    model = keras.Model(inputs, output)
    model.get_layer("features").set_weights([np.full((1, 1, 1, 1), weight, np.float32), np.array([bias], np.float32)])
    model.get_layer("probability").set_weights([np.ones((1, 1), np.float32), np.zeros(1, np.float32)])
    return model


def _truth(xy: np.ndarray) -> Truth:
    n = len(xy)
    return Truth(xy=xy, radius=np.full(n, RADIUS), label_type=np.array(["FM", "FB"] * (n // 2)), fake=np.ones(n, bool))


def test_a_model_reading_the_spot_points_at_it_with_both_methods():
    images, xy = _blob_images(40, seed=2)
    model = _one_feature_model(1.0, 0.0)   # the bright spot dominates the mean
    cam = saliency.grad_cam(saliency.cam_model(model, "features"), images, batch_size=16)
    occ = saliency.occlusion(model.predict_on_batch, images, fill=0.0, patch=4, stride=2)
    for method, maps in (("cam", cam), ("occlusion", occ)):
        metrics = localisation_metrics("test", method, maps, _truth(xy))
        assert metrics[f"test_{method}_hit_rate"] == 1.0
        assert metrics[f"test_{method}_hit_rate_fm"] == 1.0 and metrics[f"test_{method}_hit_rate_fb"] == 1.0
        assert metrics[f"test_{method}_energy"] > metrics[f"test_{method}_energy_shuffled"]
        assert metrics[f"test_{method}_hit_rate_chance"] < 0.1


def test_a_model_ignoring_the_spot_scores_at_chance():
    images, xy = _blob_images(300, seed=3)
    model = _one_feature_model(-1.0, 1.0)  # sees only dark noise pixels; the spot is zero to it
    cam = saliency.grad_cam(saliency.cam_model(model, "features"), images, batch_size=64)
    metrics = localisation_metrics("test", "cam", cam, _truth(xy), seed=0)
    chance = metrics["test_cam_hit_rate_chance"]
    assert 0.02 < chance < 0.1
    assert abs(metrics["test_cam_hit_rate"] - chance) < 0.05
    assert abs(metrics["test_cam_hit_rate"] - metrics["test_cam_hit_rate_shuffled"]) < 0.05


def test_randomised_weights_change_the_maps():
    detector = build_detector("VGG19", SIZE, weights=None, head_units=(8, 4))
    copy = saliency.reinitialised(detector)
    assert [layer.name for layer in copy.layers] == [layer.name for layer in detector.layers]
    before = detector.get_layer("backbone").get_layer("block1_conv1").get_weights()[0]
    after = copy.get_layer("backbone").get_layer("block1_conv1").get_weights()[0]
    assert not np.allclose(before, after)


def test_occlusion_grid_reaches_the_border_and_takes_any_predict():
    patch, stride, offsets = saliency.occlusion_grid(30, 8, 5)
    assert (patch, stride) == (8, 5) and offsets[-1] == 22 and offsets[0] == 0
    assert saliency.occlusion_grid(96) == (12, 12, list(range(0, 96, 12)))  # default: 64 patches
    weights = np.zeros((SIZE, SIZE), np.float32)
    weights[20:24, 4:8] = 1.0   # a "runtime" that only looks at one region

    def predict(batch):
        return (batch[..., 0] * weights).sum(axis=(1, 2)) / 16.0

    maps = saliency.occlusion(predict, np.ones((2, SIZE, SIZE, 1), np.float32), fill=0.0, patch=4, stride=4)
    assert maps.shape == (2, SIZE, SIZE)
    row, col = np.unravel_index(maps[0].argmax(), maps[0].shape)
    assert 20 <= row < 24 and 4 <= col < 8
    assert maps[0][:16].max() == 0.0


def test_background_fill_is_the_window_floor():
    assert saliency.background_hu((-700.0, 700.0)) == -1050.0


def test_models_without_a_convolutional_block_are_refused():
    inputs = keras.Input((SIZE, SIZE, 1))
    dense = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten(name="flat")(inputs)))
    with pytest.raises(UserError, match="no convolutional block"):
        saliency.cam_model(dense)
    with pytest.raises(UserError, match="not a convolutional feature map"):
        saliency.cam_model(dense, "flat")
    with pytest.raises(UserError, match="not a Keras model"):
        saliency.cam_model(object())
