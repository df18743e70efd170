"""The detector model: shapes, layer names, window maths, save/load, head transfer, precision."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medfake.models.detector import (
    window_layers,
    scaling_layers,
    attach_head,
    build_detector,
    copy_head_weights,
    count_params_m,
    embedding_model,
    feature_extractor,
    head_layer_names,
    head_model,
    has_normalisation,
    recalibrate_batchnorm,
    set_backbone_trainable,
    with_precision,
)
from medfake.core.errors import UserError
from medfake.bench.latency import calibrate_random_detector, random_ct_batch

SIZE = 32


@pytest.fixture(scope="module")
def detector():
    """A MobileNetV3Large detector at 32² whose probabilities differ between images (comparisons can fail)."""
    model = build_detector("MobileNetV3Large", SIZE)
    calibrate_random_detector(model, random_ct_batch(4, SIZE, seed=0), random_ct_batch(8, SIZE, seed=1))
    return model


@pytest.fixture(scope="module")
def hu_batch():
    return random_ct_batch(4, SIZE, seed=0)


@pytest.mark.parametrize("name", ["MobileNetV3Large", "DenseNet121"])
def test_output_is_one_probability_per_slice(name, hu_batch):
    model = build_detector(name, SIZE)
    probabilities = np.asarray(model.predict_on_batch(hu_batch))
    assert probabilities.shape == (4, 1)
    assert np.all(np.isfinite(probabilities))
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    assert model.input.name == "hu"
    assert model.input.shape == (None, SIZE, SIZE, 1)


def test_layer_names_and_study_head(detector):
    names = [layer.name for layer in detector.layers]
    for name in ("ct_window", "grey_to_rgb", "backbone", "pool", "head_dense_1", "embedding", "probability"):
        assert name in names
    assert detector.get_layer("head_dense_1").units == 512
    assert detector.get_layer("embedding").units == 256
    assert detector.get_layer("probability").units == 1
    assert detector.get_layer("probability").activation.__name__ == "sigmoid"
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in detector.layers)


def test_params_match_the_study_table_3(detector):
    assert count_params_m(detector) == pytest.approx(3.62, abs=0.01)


def test_ct_window_clips_and_scales_to_0_255():
    x = np.array([[-2000.0, -1350.0, -600.0, -225.0, 150.0, 3000.0]], np.float32)
    for layer in window_layers(center=-600, width=1500):
        x = layer(x)
    expected = [0.0, 0.0, 127.5, 191.25, 255.0, 255.0]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(x)[0], expected, atol=1e-4)


@pytest.mark.parametrize("scaling", ["none", "tf", "torch", "caffe"])
def test_scaling_layers_equal_the_registry_scaling(scaling):
    from medfake.models.registry import scale_input

    rgb = np.repeat(np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 1)).astype(np.float32), 3, axis=-1)
    x = rgb
    for layer in scaling_layers(scaling):
        x = layer(x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(x), keras.ops.convert_to_numpy(scale_input(rgb, scaling)),
                               rtol=1e-5, atol=1e-4)


def test_detector_uses_only_builtin_keras_layers(detector):
    # A saved detector must load where medfake is not imported (mlflow models serve).
    for layer in detector.layers:
        assert type(layer).__module__.startswith("keras."), type(layer)


def test_ct_window_rejects_zero_width():
    with pytest.raises(UserError, match="width"):
        window_layers(center=40, width=0)


def test_window_changes_the_output(hu_batch, detector):
    other = build_detector("MobileNetV3Large", SIZE, window=(40, 400))
    other.set_weights(detector.get_weights())
    assert np.max(np.abs(other.predict_on_batch(hu_batch) - detector.predict_on_batch(hu_batch))) > 1e-3


def test_keras_file_round_trip_gives_identical_outputs(tmp_path, detector, hu_batch):
    path = tmp_path / "detector.keras"
    detector.save(path)
    loaded = keras.saving.load_model(path)
    expected = detector.predict_on_batch(hu_batch)
    assert np.ptp(expected) > 0.05  # outputs differ between images, so equality means something
    np.testing.assert_array_equal(loaded.predict_on_batch(hu_batch), expected)


def test_head_trained_on_features_goes_back_onto_the_backbone(detector, hu_batch):
    features = feature_extractor(detector).predict_on_batch(hu_batch)
    assert features.shape == (4, 960) and features.dtype == np.float32
    head = head_model(960)
    assert [layer.name for layer in head.layers if layer.weights] == head_layer_names((512, 256))
    assert copy_head_weights(detector, head) == ["embedding", "head_dense_1", "probability"]
    np.testing.assert_allclose(head.predict_on_batch(features), detector.predict_on_batch(hu_batch), atol=1e-6)

    fresh = head_model(960)  # a new head, as phase 1 on cached features would leave it
    fresh.get_layer("probability").set_weights([w * 50 for w in fresh.get_layer("probability").get_weights()])
    other = build_detector("MobileNetV3Large", SIZE)
    other.set_weights(detector.get_weights())
    assert attach_head(other, fresh) is other
    np.testing.assert_allclose(other.predict_on_batch(hu_batch), fresh.predict_on_batch(features), atol=1e-5)
    assert np.max(np.abs(other.predict_on_batch(hu_batch) - detector.predict_on_batch(hu_batch))) > 1e-3


def test_copy_head_weights_refuses_a_different_head(detector):
    with pytest.raises(UserError, match="head layer"):
        copy_head_weights(head_model(960, head_units=(128, 256)), detector)
    with pytest.raises(UserError, match="head layers differ"):
        copy_head_weights(head_model(960, head_units=(256,)), detector)


def test_embedding_is_the_256_wide_penultimate_layer(detector, hu_batch):
    assert embedding_model(detector).predict_on_batch(hu_batch).shape == (4, 256)


def test_dropout_and_custom_head_units():
    model = build_detector("MobileNetV3Large", SIZE, head_units=(64, 32, 16), dropout=0.3)
    dense = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert dense == ["head_dense_1", "head_dense_2", "embedding", "probability"]
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in model.layers) == 4
    with pytest.raises(UserError, match="dropout"):
        build_detector("MobileNetV3Large", SIZE, dropout=1.0)


def test_unfreezing_keeps_batch_norm_in_inference_mode(detector, hu_batch):
    base = detector.get_layer("backbone")
    count = len(base.layers)
    batchnorm = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    try:
        assert set_backbone_trainable(detector, "none") == 0 and not base.trainable
        assert base.trainable_weights == [] and len(detector.trainable_weights) == 6  # the head's kernels, biases
        quarter = set_backbone_trainable(detector, 0.25)
        tail = [layer for layer in base.layers[-int(np.ceil(0.25 * count)):]]
        assert quarter == sum(1 for layer in tail if not isinstance(layer, keras.layers.BatchNormalization))
        assert not any(layer.trainable for layer in base.layers[: count - len(tail)])
        partly = len(base.trainable_weights)
        assert set_backbone_trainable(detector, "all") == count - len(batchnorm)
        assert len(base.trainable_weights) > partly > 0
        # frozen BatchNorm runs in inference mode: a training-mode call uses the moving statistics
        training = keras.ops.convert_to_numpy(detector(hu_batch, training=True))
        np.testing.assert_allclose(training, detector.predict_on_batch(hu_batch), atol=1e-4)  # eager vs graph
        # trained from scratch, BatchNorm learns too: training mode then uses batch statistics
        assert set_backbone_trainable(detector, "all", freeze_batchnorm=False) == count
        training = keras.ops.convert_to_numpy(detector(hu_batch, training=True))
        assert np.max(np.abs(training - detector.predict_on_batch(hu_batch))) > 1e-3
        with pytest.raises(UserError, match="unfreeze"):
            set_backbone_trainable(detector, "most")
    finally:
        set_backbone_trainable(detector, "all")


def test_recalibrated_batchnorm_holds_the_mean_of_its_passes_whatever_it_held_before():
    """Precise BatchNorm (from-scratch phase 2): after one pass on a batch, inference mode scores that
    batch exactly as training mode does; after two passes each layer holds the mean of the passes'
    statistics, independent of the moving statistics before; the momenta are restored."""
    model = build_detector("MobileNetV3Large", SIZE)
    set_backbone_trainable(model, "all", freeze_batchnorm=False)
    norms = [layer for layer in model.get_layer("backbone").layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    a, b = random_ct_batch(3, SIZE, seed=3), random_ct_batch(3, SIZE, seed=4)

    training = keras.ops.convert_to_numpy(model(a, training=True))
    assert np.max(np.abs(model.predict_on_batch(a) - training)) > 1e-3  # the initial statistics
    assert recalibrate_batchnorm(model, [a]) == 1
    np.testing.assert_allclose(model.predict_on_batch(a), training, atol=1e-4)  # eager vs graph
    mean_a = [np.asarray(layer.moving_mean) for layer in norms]
    recalibrate_batchnorm(model, [b])
    mean_b = [np.asarray(layer.moving_mean) for layer in norms]
    for layer in norms:  # stale statistics, as after an epoch of fast-moving weights
        layer.moving_mean.assign(layer.moving_mean + 5.0)
        layer.moving_variance.assign(layer.moving_variance * 9.0)
    assert recalibrate_batchnorm(model, iter([a, b])) == 2
    assert [layer.momentum for layer in norms] == momenta
    for layer, ma, mb in zip(norms, mean_a, mean_b):
        np.testing.assert_allclose(np.asarray(layer.moving_mean), (ma + mb) / 2, rtol=1e-4, atol=1e-5)
    assert max(float(np.max(np.abs(ma - mb))) for ma, mb in zip(mean_a, mean_b)) > 1e-3  # the passes differ


def test_recalibration_traces_once_per_detector_and_lets_it_go():
    """The training-mode forward is built once per detector (an epoch's passes reuse it; re-tracing
    each epoch would cost what tracing saved) and does not keep a discarded detector alive."""
    import gc
    import weakref

    from medfake.models import detector as det

    model = build_detector("MobileNetV3Large", SIZE)
    a, b = random_ct_batch(3, SIZE, seed=3), random_ct_batch(5, SIZE, seed=4)  # two batch sizes
    assert recalibrate_batchnorm(model, [a, b]) == 2
    forward = det._training_forward(model)
    assert recalibrate_batchnorm(model, [b]) == 1 and det._training_forward(model) is forward
    if keras.backend.backend() == "tensorflow":
        assert forward.experimental_get_tracing_count() == 1  # batch sizes 3 and 5: one graph
    alive = weakref.ref(model)
    del model, forward
    gc.collect()
    assert alive() is None


def test_bfloat16_build_keeps_float32_output_and_global_policy(hu_batch):
    model = build_detector("MobileNetV3Large", SIZE, precision="bfloat16")
    assert keras.config.dtype_policy().name == "float32"
    assert model.get_layer("backbone").layers[2].dtype_policy.name == "mixed_bfloat16"
    assert model.get_layer("embedding").compute_dtype == "bfloat16"
    assert model.get_layer("ct_window").compute_dtype == "float32"
    output = model.predict_on_batch(hu_batch)
    assert output.dtype == np.float32 and output.shape == (4, 1)


def test_with_precision_copies_weights_in_a_new_policy(detector, hu_batch):
    half = with_precision(detector, "bfloat16")
    assert half.get_layer("embedding").compute_dtype == "bfloat16"
    assert half.get_layer("probability").compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"
    # Same weights (variables stay float32 under a mixed policy); outputs are not compared: a random
    # deep network amplifies bfloat16 rounding so much that its probabilities can differ by ~0.9.
    assert len(half.weights) == len(detector.weights)
    for copied, original in zip(half.weights, detector.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(copied), keras.ops.convert_to_numpy(original))
    probabilities = np.asarray(half.predict_on_batch(hu_batch), np.float32)
    assert probabilities.shape == (len(hu_batch), 1) and np.all((probabilities >= 0) & (probabilities <= 1))
    with pytest.raises(UserError, match="precision"):
        with_precision(detector, "int8")


def test_only_vgg19_has_no_normalisation_layer(detector, hu_batch):
    assert has_normalisation(detector)  # BatchNorm
    convnext, vgg = build_detector("ConvNeXtTiny", SIZE), build_detector("VGG19", SIZE)
    assert has_normalisation(convnext)  # LayerNorm only
    assert not has_normalisation(vgg)
    # Without BatchNorm there are no moving statistics to re-measure: no passes.
    assert recalibrate_batchnorm(convnext, [hu_batch]) == recalibrate_batchnorm(vgg, [hu_batch]) == 0


def test_image_below_minimum_size_names_size_and_backbone():
    with pytest.raises(UserError, match=r"64.*71.*Xception"):
        build_detector("Xception", 64)
    with pytest.raises(UserError, match="unknown backbone"):
        build_detector("AlexNet", 64)


def _channels(model: keras.Model) -> keras.Model:
    return keras.Model(model.input, model.get_layer("grey_to_rgb").output)


def test_noise_residual_channels_are_a_fixed_laplacian_of_the_window(hu_batch):
    # (center, width) = (-700, 700): HU -1050..-350 onto 0..255, so 1 HU is 255/700 grey levels.
    model = build_detector("MobileNetV3Large", SIZE, window=(-700, 700), noise_residual=True)
    amplitude = 30.0  # HU, the phantom's checkerboard (medfake.data.phantom.tamper.CHECKER_HU)
    rows, cols = np.indices((SIZE, SIZE))
    sign = np.where((rows + cols) % 2 == 0, 1.0, -1.0)
    lung, nodule = np.full((SIZE, SIZE), -850.0), np.full((SIZE, SIZE), 60.0)  # nodule: white in this window
    images = np.stack([lung, lung + amplitude * sign, nodule + amplitude * sign])[..., None].astype(np.float32)
    out = keras.ops.convert_to_numpy(_channels(model).predict_on_batch(images))
    inner = (slice(1, -1), slice(1, -1))  # zero padding makes the border differ
    np.testing.assert_allclose(out[0][inner][..., 0], (-850.0 + 1050.0) * 255.0 / 700.0, rtol=1e-5)
    np.testing.assert_allclose(out[0][inner][..., 1:], 127.5, atol=1e-3)  # flat HU leaves no residual
    expected = 127.5 + 8.0 * amplitude * 255.0 / 700.0 * sign
    for image in (1, 2):
        for channel in (1, 2):
            np.testing.assert_allclose(out[image][..., channel][inner], expected[inner], atol=1e-3)
    # On the nodule the window saturates (grey 255 everywhere) but the residual, taken before the
    # window's clip, still carries the checkerboard.
    np.testing.assert_array_equal(out[2][..., 0], 255.0)
    # The study's input (default) repeats the grey slice; the residual is absent.
    study = _channels(build_detector("MobileNetV3Large", SIZE, window=(-700, 700)))
    repeated = keras.ops.convert_to_numpy(study.predict_on_batch(images[1:2]))[0]
    np.testing.assert_array_equal(repeated[..., 1], repeated[..., 0])
    assert "noise_residual" not in [layer.name for layer in study.layers]


def test_noise_residual_stays_fixed_saves_and_keeps_float32(tmp_path, hu_batch):
    model = build_detector("MobileNetV3Large", SIZE, noise_residual=True)
    set_backbone_trainable(model, "all")
    residual = model.get_layer("noise_residual")
    assert not residual.trainable and not residual.trainable_weights
    assert all(type(layer).__module__.startswith("keras.") for layer in model.layers)
    path = tmp_path / "residual.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.get_layer("noise_residual").get_weights()[0],
                                  residual.get_weights()[0])
    np.testing.assert_array_equal(loaded.predict_on_batch(hu_batch), model.predict_on_batch(hu_batch))
    half = with_precision(model, "bfloat16")
    assert half.get_layer("noise_residual").compute_dtype == "float32"
    assert half.get_layer("embedding").compute_dtype == "bfloat16"
    # Phase 1's head on cached features goes back onto a residual detector; the filter is not "head".
    assert copy_head_weights(model, head_model(960)) == ["embedding", "head_dense_1", "probability"]
