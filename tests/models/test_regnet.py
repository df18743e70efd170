"""RegNetX040/RegNetY040 on Keras 3 equal tf-keras's, so the official ImageNet .h5 files load.

Proof without a download: build tf-keras's model, give its BatchNorms non-trivial statistics,
save its weights in the legacy .h5 format (the format of the official files), load that file
into ours and compare outputs on the same input.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import replace

import keras
import numpy as np
import pytest

from medfake.models import regnet

tf_keras_regnet = pytest.importorskip("tf_keras.applications.regnet")
import tf_keras  # noqa: E402  (present whenever the line above passed)

SIZE = 64
VARIANTS = {
    "regnetx040": (tf_keras_regnet.RegNetX040, regnet.RegNetX040),
    "regnety040": (tf_keras_regnet.RegNetY040, regnet.RegNetY040),
}


def _perturb_batch_norms(model, rng):
    """Random gamma/beta/moving statistics so a wrong weight order changes the output."""
    for layer in model.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.2, 0.4, gamma.shape),  # small gammas keep 20-odd residual blocks O(1)
                    rng.normal(0.0, 0.05, beta.shape),
                    rng.normal(0.0, 0.1, mean.shape),
                    rng.uniform(0.5, 1.5, variance.shape),
                ]
            )


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory):
    """(design name, tf-keras model, its .h5 weights path, our model loaded from that file, input batch)."""
    design_name = request.param
    build_reference, build_ours = VARIANTS[design_name]
    rng = np.random.default_rng(7)
    reference = build_reference(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    _perturb_batch_norms(reference, rng)
    weights_path = tmp_path_factory.mktemp(design_name) / f"{design_name}_notop.h5"
    reference.save_weights(str(weights_path))
    ours = build_ours(weights=str(weights_path), input_shape=(SIZE, SIZE, 3))
    images = rng.uniform(0.0, 255.0, (2, SIZE, SIZE, 3)).astype("float32")
    return design_name, reference, weights_path, ours, images


def test_outputs_equal_tf_keras_after_loading_its_h5(pair):
    _, reference, _, ours, images = pair
    expected = np.asarray(reference(images, training=False))
    got = keras.ops.convert_to_numpy(ours(images, training=False))
    assert got.shape == expected.shape == (2, SIZE // 32, SIZE // 32, ours.output.shape[-1])
    assert expected.std() > 1e-2, "reference output is degenerate; the comparison would prove nothing"
    assert np.abs(got - expected).max() <= 1e-4


def test_untrained_model_differs_from_loaded_one(pair):
    """The equality above comes from the loaded file, not from identical initialisers."""
    design_name, reference, _, _, images = pair
    fresh = regnet.build_regnet(design_name, input_shape=(SIZE, SIZE, 3))
    expected = np.asarray(reference(images, training=False))
    assert np.abs(keras.ops.convert_to_numpy(fresh(images, training=False)) - expected).max() > 1e-2


def test_layer_names_order_and_param_count_equal_tf_keras(pair):
    _, reference, _, ours, _ = pair
    def weighted_layers(model):
        return [(layer.name, [tuple(w.shape) for w in layer.weights]) for layer in model.layers if layer.weights]

    assert weighted_layers(ours) == weighted_layers(reference)
    assert ours.count_params() == reference.count_params()


def test_model_includes_its_own_rescaling(pair):
    """RegNet takes 0..255 pixels: its first layer divides by 255 (the registry's scaling "none")."""
    design_name, _, _, ours, _ = pair
    rescaling = ours.get_layer(f"{design_name}_prestem_rescaling")
    assert isinstance(rescaling, keras.layers.Rescaling)
    assert rescaling.scale == pytest.approx(1 / 255)


def test_keras_format_round_trip(pair, tmp_path):
    """A model wrapping our RegNet saves as .keras and reloads with identical outputs."""
    _, _, _, ours, images = pair
    inputs = keras.Input((SIZE, SIZE, 3))
    features = keras.layers.GlobalAveragePooling2D()(ours(inputs, training=False))
    wrapper = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(features))
    path = tmp_path / "wrapper.keras"
    wrapper.save(path)
    reloaded = keras.saving.load_model(path)
    before = keras.ops.convert_to_numpy(wrapper(images, training=False))
    after = keras.ops.convert_to_numpy(reloaded(images, training=False))
    np.testing.assert_array_equal(after, before)


def test_imagenet_weights_come_from_the_keras_cache(pair, tmp_path, monkeypatch):
    """weights="imagenet" asks keras.utils.get_file for <name>_notop.h5 in models/ and loads it, checking its hash."""
    design_name, reference, weights_path, _, images = pair
    cache = tmp_path / "keras_home"
    (cache / "models").mkdir(parents=True)
    cached = cache / "models" / regnet.weights_file_name(design_name)
    cached.write_bytes(weights_path.read_bytes())
    digest = hashlib.sha256(cached.read_bytes()).hexdigest()
    monkeypatch.setitem(regnet.DESIGNS, design_name, replace(regnet.DESIGNS[design_name], notop_sha256=digest))
    monkeypatch.setattr(keras.utils, "get_file", functools.partial(keras.utils.get_file, cache_dir=str(cache)))
    model = regnet.build_regnet(design_name, weights="imagenet", input_shape=(SIZE, SIZE, 3))
    expected = np.asarray(reference(images, training=False))
    assert np.abs(keras.ops.convert_to_numpy(model(images, training=False)) - expected).max() <= 1e-4


def test_official_file_names_and_hashes():
    assert regnet.weights_file_name("regnetx040") == "regnetx040_notop.h5"
    assert regnet.weights_file_name("regnety040", include_top=True) == "regnety040.h5"
    assert regnet.DESIGNS["regnetx040"].notop_sha256.startswith("b4ed0ca0")
    assert regnet.DESIGNS["regnety040"].notop_sha256.startswith("b5be2a5e")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_shape": (31, 31, 3)},
        {"input_shape": (64, 64, 1)},
        {"weights": "/nonexistent/regnet.h5"},
        {"pooling": "median"},
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        regnet.RegNetX040(**kwargs)


def test_pooling_and_top_shapes():
    assert regnet.RegNetY040(input_shape=(32, 32, 3), pooling="avg").output.shape == (None, 1088)
    assert regnet.RegNetX040(input_shape=(32, 32, 3), pooling="max").output.shape == (None, 1360)
    assert regnet.RegNetX040(include_top=True, classes=5).output.shape == (None, 5)
    assert regnet.RegNetX040().input.shape == (None, None, None, 3)
