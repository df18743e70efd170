"""Every (training precision × runtime) pair scans: detectors trained by the real train step in bfloat16
and float32, scanned with runtime auto, keras, onnx and openvino (issue 12, item 1)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from dicom_factory import phantom_volume, write_series
from tiny_data import TINY, tiny_dataset
from medfake.inference import loading
from medfake.inference import scan as sc

SIZE = 32
# MobileNetV3Large with random weights scores every 32² slice alike (nothing to compare flags on);
# DenseNet121 exports to both runtimes and its "torch" input scaling puts constants in the graph
BACKBONE = "DenseNet121"
RUNTIMES = ("auto", "keras", "onnx", "openvino")
OPTIMIZER_WARNING = "Skipping variable loading for optimizer"
# one epoch each phase: the tests check the runtimes agree, not that the detector is good
FAST = [*TINY, "train.phase1_epochs=1", "train.phase2_epochs=1", "eval.runtime_check=true"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Module-wide MLflow store and working folder (the export cache lives under ./.medfake)."""
    folder = tmp_path_factory.mktemp("scan-runtimes")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        patch.chdir(folder)
        import mlflow

        mlflow.set_tracking_uri(uri)
        yield folder
        while mlflow.active_run():
            mlflow.end_run()


@pytest.fixture(scope="module")
def dataset(workspace):
    from medfake.core.config import load_config
    from medfake.data.preprocess import cache_path

    return tiny_dataset(cache_path(load_config("quickstart", FAST), "b" * 16), size=SIZE)


def _train(dataset, precision: str) -> str:
    from medfake.core.config import load_config
    from medfake.training.train import resolve_plan, train

    plan = resolve_plan(BACKBONE, load_config("quickstart", [*FAST, f"train.precision={precision}"]), "screen")
    return train(plan, data_digest=dataset.digest, progress=False)


@pytest.fixture(scope="module")
def trained(dataset) -> dict[str, str]:
    """precision → run id of a detector the train step fitted in that precision (each trains once)."""
    return {precision: _train(dataset, precision) for precision in ("bfloat16", "float32")}


@pytest.fixture(scope="module")
def series_folder(tmp_path_factory):
    """A 12-slice series at the detectors' size; slices 4-7 carry the bright square the fakes had."""
    volume = phantom_volume(n=12, size=SIZE, seed=5)
    volume[4:8, 8:16, 8:16] += 400
    folder = tmp_path_factory.mktemp("series") / "one"
    write_series(folder, volume)
    return folder


def _scores(report: dict) -> np.ndarray:
    return np.array([row["score"] for row in report["series"][0]["scores"]])


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bfloat16", "float32"])
def test_every_runtime_scans_and_agrees_with_keras_float32(trained, series_folder, precision):
    import mlflow

    run_id = trained[precision]
    logged = mlflow.get_run(run_id).data
    assert logged.params["precision_used"] == precision
    # the train step measured every fast way to run it on its test slices (issue 17)
    deltas = {k: v for k, v in logged.metrics.items() if k.startswith("max_abs_dp/")}
    from medfake.models.runtime import openvino_has_bfloat16

    bf16 = {"max_abs_dp/openvino-bfloat16"} if openvino_has_bfloat16() else set()  # else OpenVINO runs f32 only
    assert set(deltas) == {"max_abs_dp/keras-bfloat16", "max_abs_dp/openvino-float32"} | bf16
    assert deltas["max_abs_dp/openvino-float32"] <= 1e-4 and 0 < deltas["max_abs_dp/keras-bfloat16"] < 1
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reference = loading.load_scorer(run_id, runtime="keras", precision="float32", notes=notes.append)
    assert not [w for w in caught if OPTIMIZER_WARNING in str(w.message)]
    assert reference.name == "keras-float32"
    expected = _scores(sc.scan(series_folder, reference))
    # a threshold in the widest gap between the reference scores, so flags that differ are a real
    # disagreement: float32 runtimes differ from Keras by ~1e-6, far less than the gap's half
    ordered = np.sort(expected)
    gap = int(np.argmax(np.diff(ordered)))
    assert ordered[gap + 1] - ordered[gap] > 2e-4, ordered
    threshold = float((ordered[gap] + ordered[gap + 1]) / 2)
    flags = expected >= threshold
    names = {}
    for runtime in RUNTIMES:
        scorer = loading.load_scorer(run_id, runtime=runtime, precision="float32", notes=notes.append)
        report = sc.scan(series_folder, scorer, threshold=threshold, min_slices=1)
        names[runtime] = scorer.name
        scores = _scores(report)
        assert np.max(np.abs(scores - expected)) <= 1e-3, (runtime, scores, expected)
        assert np.array_equal(scores >= threshold, flags), runtime
        assert report["series"][0]["verdict"] == "suspicious"
    assert notes == []  # no runtime fell back to keras
    assert names == {"auto": "openvino-float32", "keras": "keras-float32", "onnx": "onnx-float32",
                     "openvino": "openvino-float32"}


@pytest.mark.slow
def test_cli_default_runtime_scans_a_bfloat16_detector_without_warnings(trained, series_folder, capfd):
    """The issue's crash: a bfloat16 detector, `medfake scan` with the default runtime."""
    from medfake.cli import main

    import mlflow

    assert main(["scan", str(series_folder), "--model", trained["bfloat16"], "--json", "-", "--quiet"]) == 0
    out, err = capfd.readouterr()
    report = json.loads(out)
    from medfake.models.runtime import openvino_has_bfloat16

    # the default precision follows the detector's own check: bfloat16 only where its |Δp| ≤ 0.01
    assert "Traceback" not in err and OPTIMIZER_WARNING not in err
    notes = [line for line in err.splitlines() if "note:" in line]
    if not openvino_has_bfloat16():
        assert report["runtime"] == "openvino-float32"
        assert notes == ["medfake scan: note: precision float32: this CPU has no bfloat16 (OpenVINO lists no BF16 capability)"]
    else:
        delta = mlflow.get_run(trained["bfloat16"]).data.metrics["max_abs_dp/openvino-bfloat16"]
        expected = "bfloat16" if delta <= 0.01 else "float32"
        assert report["runtime"] == f"openvino-{expected}"
        assert notes == [f"medfake scan: note: precision {expected}: max_abs_dp/openvino-bfloat16 = {delta:.1e} "
                         f"{'≤' if expected == 'bfloat16' else '>'} 0.01 on this detector's test slices"]
    assert report["series"][0]["slices_scored"] == 12


def test_runtime_that_cannot_take_the_model_falls_back_to_keras_with_one_note(tmp_path, series_folder, capfd):
    """tf2onnx cannot convert grouped convolutions (RegNet's): onnx falls back to keras, no traceback."""
    import keras

    from medfake.cli import main

    hu = keras.Input((SIZE, SIZE, 1), name="hu")
    x = keras.layers.Rescaling(1 / 1000.0)(hu)
    x = keras.layers.Conv2D(4, 3, padding="same")(x)
    x = keras.layers.Conv2D(4, 3, groups=2, padding="same", name="grouped")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(hu, keras.layers.Dense(1, activation="sigmoid")(x))
    path = tmp_path / "grouped.keras"
    model.save(path)
    notes: list[str] = []
    scorer = loading.load_scorer(str(path), runtime="onnx", notes=notes.append)
    assert scorer.name == "keras-float32" and scorer.input_size == SIZE
    assert len(notes) == 2 and notes[0].startswith("runtime onnx cannot run this model") and "keras" in notes[0]
    assert notes[1] == "precision float32: no runtime check is recorded for a model file (a train run logs one)"
    assert main(["scan", str(series_folder), "--model", str(path), "--runtime", "onnx", "--json", "-", "--quiet"]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out)["runtime"] == "keras-float32"
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert [line for line in lines if line.startswith("medfake scan: note: runtime onnx")] and \
        sum("medfake scan: note: runtime" in line for line in lines) == 1
    assert "medfake scan: note: precision float32: no runtime check is recorded for a model file (a train run logs one)" in lines
