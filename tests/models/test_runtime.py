"""Inference runtimes: ONNX Runtime and OpenVINO (float32) give Keras's probabilities."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from medfake.models import runtime as runtime_module
from medfake.models.detector import build_detector
from medfake.core.errors import UserError
from medfake.bench.latency import calibrate_random_detector, random_ct_batch
from medfake.models.runtime import available_runtimes, export_detector, load_runtime

SIZE = 32


@pytest.fixture(scope="module")
def detector():
    """DenseNet121 at 32² (its "torch" input scaling puts constant arrays in the exported graph),
    calibrated so probabilities differ between images (equality can fail)."""
    model = build_detector("DenseNet121", SIZE)
    calibrate_random_detector(model, random_ct_batch(4, SIZE, seed=0), random_ct_batch(8, SIZE, seed=1))
    return model


@pytest.fixture(scope="module")
def hu_batch():
    return random_ct_batch(4, SIZE, seed=0)


@pytest.fixture(scope="module")
def keras_probabilities(detector, hu_batch):
    probabilities = np.asarray(detector.predict_on_batch(hu_batch)).reshape(-1)
    assert np.ptp(probabilities) > 0.05
    return probabilities


def test_keras_runtime_and_precision(detector, hu_batch, keras_probabilities):
    plain = load_runtime(detector, "keras")
    assert plain.name == "keras-float32"
    np.testing.assert_array_equal(plain.predict(hu_batch), keras_probabilities)
    half = load_runtime(detector, "keras", "bfloat16")
    assert half.name == "keras-bfloat16"
    assert half.predict(hu_batch).shape == (4,)
    with pytest.raises(UserError, match=r"\(n, size, size, 1\)"):
        plain.predict(hu_batch[..., 0])


def test_keras_file_loads_by_suffix(tmp_path, detector, hu_batch, keras_probabilities):
    path = tmp_path / "detector.keras"
    detector.save(path)
    loaded = load_runtime(path)
    assert loaded.runtime == "keras"
    np.testing.assert_array_equal(loaded.predict(hu_batch), keras_probabilities)


def test_onnx_equals_keras(tmp_path, detector, hu_batch, keras_probabilities):
    pytest.importorskip("onnxruntime")
    paths = export_detector(detector, tmp_path, formats=("onnx",))
    assert paths == {"onnx": tmp_path / "detector.onnx"} and paths["onnx"].is_file()
    onnx = load_runtime(paths["onnx"])
    assert onnx.name == "onnx-float32"
    # 1e-3, not 1e-4: a random-weight DenseNet121 amplifies float32 reordering (1.4e-4 was seen once);
    # a wrong export (scaling, window, layout) is off by far more.
    np.testing.assert_allclose(onnx.predict(hu_batch), keras_probabilities, atol=1e-3)
    np.testing.assert_allclose(onnx.predict(hu_batch[:1]), keras_probabilities[:1], atol=1e-3)  # dynamic batch
    with pytest.raises(UserError, match="float32 only"):
        load_runtime(paths["onnx"], precision="bfloat16")
    with pytest.raises(UserError, match="cannot run with runtime openvino"):
        load_runtime(paths["onnx"], runtime="openvino")


def test_openvino_float32_equals_keras(tmp_path, detector, hu_batch, keras_probabilities):
    pytest.importorskip("openvino")
    paths = export_detector(detector, tmp_path, formats=("openvino",))
    assert paths["openvino"].suffix == ".xml" and paths["openvino"].with_suffix(".bin").is_file()
    exact = load_runtime(paths["openvino"], precision="float32")
    assert exact.name == "openvino-float32"
    np.testing.assert_allclose(exact.predict(hu_batch), keras_probabilities, atol=1e-4)
    default = load_runtime(paths["openvino"])  # the device's default precision (bf16 with AMX / avx512_bf16)
    assert default.name.startswith("openvino-")
    assert np.all(np.isfinite(default.predict(hu_batch)))


def test_noise_residual_detector_exports_to_every_runtime(tmp_path, hu_batch):
    """The quickstart's input (model.noise_residual: a fixed Laplacian beside the grey window) must
    survive ONNX and OpenVINO export: scan's default runtime scores that detector."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    model = build_detector("DenseNet121", SIZE, noise_residual=True)
    calibrate_random_detector(model, random_ct_batch(4, SIZE, seed=0), random_ct_batch(8, SIZE, seed=1))
    expected = np.asarray(model.predict_on_batch(hu_batch)).reshape(-1)
    assert np.ptp(expected) > 0.05
    paths = export_detector(model, tmp_path, formats=("onnx", "openvino"))
    np.testing.assert_allclose(load_runtime(paths["onnx"]).predict(hu_batch), expected, atol=1e-3)
    exact = load_runtime(paths["openvino"], precision="float32")
    np.testing.assert_allclose(exact.predict(hu_batch), expected, atol=1e-3)


def test_auto_picks_the_fastest_installed_runtime(detector, hu_batch, keras_probabilities):
    installed = available_runtimes()
    assert installed[-1] == "keras"
    chosen = load_runtime(detector, "auto", precision="float32")
    assert chosen.runtime == installed[0]
    np.testing.assert_allclose(chosen.predict(hu_batch), keras_probabilities, atol=1e-4)


def test_missing_optional_package_names_the_extra(monkeypatch, tmp_path):
    real_find_spec = runtime_module.importlib.util.find_spec
    monkeypatch.setattr(
        runtime_module.importlib.util, "find_spec",
        lambda name: None if name == "onnxruntime" else real_find_spec(name),
    )
    assert "onnx" not in available_runtimes()
    model_file = tmp_path / "detector.onnx"
    model_file.write_bytes(b"")
    with pytest.raises(UserError, match=r"pip install 'medfake\[runtime\]'"):
        load_runtime(model_file)


def test_bad_files_and_options_are_user_errors(tmp_path, detector):
    with pytest.raises(UserError, match="does not exist"):
        load_runtime(tmp_path / "missing.onnx")
    unknown = tmp_path / "detector.pt"
    unknown.write_bytes(b"")
    with pytest.raises(UserError, match="unknown model file type"):
        load_runtime(unknown)
    with pytest.raises(UserError, match="runtime must be"):
        load_runtime(detector, "tensorrt")
    with pytest.raises(UserError, match="precision must be"):
        load_runtime(detector, "keras", "int8")
    with pytest.raises(UserError, match="export format"):
        export_detector(detector, tmp_path, formats=("tflite",))


@pytest.mark.parametrize("scaling", ["tf", "torch", "caffe"])
def test_every_input_scaling_survives_onnx_export(tmp_path, scaling):
    """The preprocessing constants must stay constants in the exported graph (not missing inputs)."""
    pytest.importorskip("onnxruntime")
    import keras

    from medfake.models.detector import scaling_layers, window_layers

    hu = keras.Input((8, 8, 1), name="hu")
    x = hu
    for layer in window_layers(-600, 1500):
        x = layer(x)
    x = keras.layers.Concatenate()([x, x, x])
    for layer in scaling_layers(scaling):
        x = layer(x)
    model = keras.Model(hu, keras.layers.GlobalAveragePooling2D()(x))
    batch = random_ct_batch(2, 8, seed=3)
    onnx = load_runtime(export_detector(model, tmp_path, formats=("onnx",))["onnx"])
    expected = np.asarray(model.predict_on_batch(batch)).reshape(-1)
    np.testing.assert_allclose(onnx.predict(batch), expected, rtol=1e-5, atol=1e-4)


def test_onnx_export_refuses_grouped_convolutions(tmp_path):
    """Keras runs grouped convolutions through XLA on CPU, which tf2onnx leaves unconverted (RegNet)."""
    pytest.importorskip("onnx")
    import keras

    images = keras.Input((8, 8, 4))
    model = keras.Model(images, keras.layers.Conv2D(4, 3, groups=2, name="grouped")(images), name="grouped_net")
    with pytest.raises(UserError, match="ONNX export of grouped_net is not possible.*openvino"):
        export_detector(model, tmp_path, formats=("onnx",))
    assert not (tmp_path / "detector.onnx").exists()


OFFLINE_EXPORT = """
import multiprocessing, sys, tempfile
import keras
started = []
multiprocessing.Process.start = lambda self: started.append(self)  # record, never run
from medfake.models.runtime import export_detector
images = keras.Input((8, 8, 1))
model = keras.Model(images, keras.layers.Dense(1)(keras.layers.Flatten()(images)))
export_detector(model, tempfile.mkdtemp(), formats=("openvino",))
print("processes", len(started), "telemetry", sys.modules.get("openvino_telemetry"))
"""


def test_openvino_export_sends_no_usage_events(tmp_path):
    """OpenVINO's converter forks a process per Google Analytics event unless told not to; a medfake
    export starts none (a fresh HOME has no opt-out file, so the converter's own default would send)."""
    pytest.importorskip("openvino")
    env = {key: value for key, value in os.environ.items() if key not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env["HOME"] = env["TMPDIR"] = str(tmp_path)  # the export folder goes with the test's
    done = subprocess.run([sys.executable, "-c", OFFLINE_EXPORT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "processes 0 telemetry None" in done.stdout
    assert not (tmp_path / "intel").exists()  # no client id or consent file written either


def _signal_stack() -> tuple[int, int, int]:
    stack = runtime_module._SignalStack()
    assert runtime_module.ctypes.CDLL(None).sigaltstack(None, runtime_module.ctypes.byref(stack)) == 0
    return stack.ss_sp or 0, stack.ss_flags, stack.ss_size


def test_openvino_loading_keeps_the_threads_signal_stack(tmp_path, detector, hu_batch):
    """Each OpenVINO compiled model points the loading thread's alternate signal stack at its own
    memory and puts back the one it saw when it is freed; freed out of order, the thread was left with
    a freed stack and Python's SA_ONSTACK handlers crashed on the next SIGTERM (seen on an AVX512_BF16 CPU)."""
    pytest.importorskip("openvino")
    before = _signal_stack()
    path = export_detector(detector, tmp_path, formats=("openvino",))["openvino"]
    first = load_runtime(path, precision="float32")
    second = load_runtime(path, precision="bfloat16")
    first.predict(hu_batch), second.predict(hu_batch)
    assert _signal_stack() == before
    del first  # freed before the later one, as runtime_check's loop frees them
    assert _signal_stack() == before
    del second
    assert _signal_stack() == before


WORKER = """
import tempfile, time
import keras, numpy as np
from medfake.core import tracking
from medfake.models.runtime import export_detector, load_runtime
with tracking.run("medfake-sigterm", "openvino-check", "screen"):
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    path = export_detector(model, tempfile.mkdtemp(), formats=("openvino",))["openvino"]
    for precision in ("float32", "bfloat16"):  # the float32 runtime is freed after the bfloat16 one loads
        loaded = load_runtime(path, precision=precision)
        loaded.predict(np.zeros((2, 16, 16, 1), np.float32))
    del loaded
    print("LOADED", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
def test_sigterm_after_an_openvino_load_ends_the_run_killed(tracking_store, tmp_path):
    """A real process, SIGTERMed after loading OpenVINO runtimes (what a train run's runtime check
    and scan do), ends its MLflow run KILLED instead of dying of SIGSEGV with the run RUNNING."""
    from mlflow.tracking import MlflowClient

    pytest.importorskip("openvino")
    worker = subprocess.Popen([sys.executable, "-c", WORKER], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "TMPDIR": str(tmp_path)})  # its export folder goes with the test's
    try:
        assert worker.stdout.readline().strip() == "LOADED"
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert code != -signal.SIGSEGV
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("medfake-sigterm").experiment_id])
    assert [run.info.status for run in runs] == ["KILLED"]
