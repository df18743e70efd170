"""The backbone registry: every entry builds, runs, matches the study's Table 3 and Keras's weight files."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from medfake.models import registry as backbones
from medfake.models.registry import get_backbone, list_backbones, scale_input
from medfake.core.errors import UserError

STUDY_ORDER = [
    "ConvNeXtTiny", "DenseNet121", "DenseNet169", "DenseNet201", "EfficientNetB4", "EfficientNetV2S",
    "InceptionV3", "MobileNetV3Large", "RegNetX040", "RegNetY040", "ResNet50V2", "VGG19", "Xception",
]  # fmt: skip
PAPER_SIZE = 512
ALL = pytest.mark.parametrize("backbone", list_backbones(), ids=lambda backbone: backbone.name)
PACKAGE = Path(backbones.__file__).parent


@pytest.fixture(autouse=True)
def fresh_keras_session():
    """Drop the previous test's graphs so 13 models in a row do not pile up in memory."""
    yield
    keras.backend.clear_session()


def head_params(feature_width: int) -> int:
    """The study's head: GAP → Dense 512 → Dense 256 → Dense 1 (weights + biases)."""
    return feature_width * 512 + 512 + 512 * 256 + 256 + 256 + 1


def test_registry_holds_the_study_backbones_in_order():
    assert [backbone.name for backbone in list_backbones()] == STUDY_ORDER
    assert all(backbone.scaling in backbones.SCALINGS for backbone in list_backbones())


@ALL
def test_builds_and_runs_at_minimum_size(backbone):
    """Minimum-size base + GAP + sigmoid unit gives two probabilities for a batch of two."""
    size = backbone.min_size
    base = backbone.constructor(input_shape=(size, size, 3), weights=None)
    assert base.output.shape[-1] == backbone.feature_width
    inputs = keras.Input((size, size, 3))
    features = base(scale_input(inputs, backbone.scaling), training=False)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(pooled))
    images = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    probabilities = keras.ops.convert_to_numpy(model(images, training=False))
    assert probabilities.shape == (2, 1)
    assert np.all(np.isfinite(probabilities))
    assert np.all((probabilities >= 0) & (probabilities <= 1))


@ALL
def test_minimum_size_is_the_minimum(backbone):
    below = backbone.min_size - 1
    with pytest.raises(ValueError):
        backbone.constructor(input_shape=(below, below, 3), weights=None)


@ALL
def test_params_with_study_head_match_table_3(backbone):
    """Seed Table 3 parameter counts come out with the study's head at 512² (to 0.05 M)."""
    base = backbone.constructor(input_shape=(PAPER_SIZE, PAPER_SIZE, 3), weights=None)
    assert base.output.shape[-1] == backbone.feature_width
    total_m = (base.count_params() + head_params(backbone.feature_width)) / 1e6
    assert abs(total_m - backbone.paper_params_m) <= 0.05, f"{backbone.name}: {total_m:.3f} M"


@ALL
def test_imagenet_request_names_the_registered_file(backbone, monkeypatch):
    """weights="imagenet" asks Keras for exactly weights_file at weights_url, under cache_subdir models."""
    from keras.src.utils import file_utils  # where keras.applications looks get_file up at call time

    requests = []

    class Intercepted(Exception):
        pass

    def fake_get_file(fname=None, origin=None, cache_subdir="datasets", **kwargs):
        requests.append((fname, origin, cache_subdir))
        raise Intercepted

    monkeypatch.setattr(file_utils, "get_file", fake_get_file)
    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    size = max(backbone.min_size, 75)
    with pytest.raises(Intercepted):
        backbone.constructor(input_shape=(size, size, 3), weights="imagenet")
    assert requests == [(backbone.weights_file, backbone.weights_url, "models")]


@pytest.mark.parametrize("spelling", ["xception", "XCEPTION", "Xception", " xception "])
def test_lookup_ignores_case(spelling):
    assert get_backbone(spelling).name == "Xception"
    assert get_backbone(spelling).feature_width == 2048


@pytest.mark.parametrize("name", ["resnet50", "baseline", ""])
def test_unknown_name_lists_the_valid_ones(name):
    with pytest.raises(UserError) as raised:
        get_backbone(name)
    message = str(raised.value)
    assert "\n" not in message
    assert all(valid in message for valid in STUDY_ORDER)


def test_table_3_latencies_are_recorded():
    assert get_backbone("MobileNetV3Large").paper_latency_ms == (325.4, 44.7)
    assert get_backbone("ConvNeXtTiny").paper_latency_ms == (582.1, 18.6)
    assert all(len(backbone.paper_latency_ms) == 2 for backbone in list_backbones())


PIXEL = np.array([[[[255.0, 0.0, 127.5]]]], dtype="float32")  # one RGB pixel, batch 1, 1×1
EXPECTED_PIXEL = {
    "none": [255.0, 0.0, 127.5],
    "tf": [1.0, -1.0, 0.0],
    "torch": [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (0.5 - 0.406) / 0.225],
    "caffe": [127.5 - 103.939, 0.0 - 116.779, 255.0 - 123.68],  # B, G, R
}


@pytest.mark.parametrize("scaling", list(EXPECTED_PIXEL))
def test_scale_input_on_a_known_pixel(scaling):
    scaled = keras.ops.convert_to_numpy(scale_input(keras.ops.convert_to_tensor(PIXEL), scaling))
    np.testing.assert_allclose(scaled.reshape(3), EXPECTED_PIXEL[scaling], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scaling", ["tf", "torch", "caffe"])
def test_scale_input_equals_keras_preprocess_input(scaling):
    images = np.random.default_rng(1).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    expected = keras.applications.imagenet_utils.preprocess_input(images.copy(), mode=scaling)
    scaled = keras.ops.convert_to_numpy(scale_input(keras.ops.convert_to_tensor(images), scaling))
    np.testing.assert_allclose(scaled, expected, rtol=1e-5, atol=1e-4)


def test_scale_input_rejects_unknown_mode():
    with pytest.raises(ValueError, match="torch"):
        scale_input(PIXEL, "imagenet")


def test_scale_input_survives_keras_save(tmp_path):
    """scale_input's keras.ops inside a functional model are saved and restored with it."""
    inputs = keras.Input((2, 2, 3))
    model = keras.Model(inputs, scale_input(inputs, "caffe"))
    model.save(tmp_path / "scaled.keras")
    reloaded = keras.saving.load_model(tmp_path / "scaled.keras")
    images = np.random.default_rng(2).uniform(0, 255, (1, 2, 2, 3)).astype("float32")
    expected = images[..., ::-1] - np.array(backbones.IMAGENET_MEAN_BGR)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(images)), expected, atol=1e-4)


@pytest.mark.parametrize("module", ["registry.py", "regnet.py"])
def test_model_code_imports_neither_tensorflow_nor_mlflow(module):
    """Model code stays backend-neutral (keras / keras.ops only) and light."""
    tree = ast.parse((PACKAGE / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "keras" in imported
    assert not imported & {"tensorflow", "tf_keras", "mlflow"}


def test_importing_the_registry_does_not_import_mlflow():
    code = "import sys, medfake.models.registry; print('mlflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
