"""Latency benchmark: the timing function, row parsing, the CLI report, and light imports."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import numpy as np
import pytest

from medfake import cli
from medfake.core.errors import UserError
from medfake.core.device import interleaved_step_times_ms, measure_latency
from medfake.bench.latency import RowSpec, parse_rows, random_ct_batch
from medfake.bench.latency_report import LatencyRow, render_markdown

PACKAGE = Path(__file__).resolve().parents[2] / "medfake"


def test_interleaved_timing_takes_turns():
    calls = []
    times = interleaved_step_times_ms([lambda b: calls.append("a"), lambda b: calls.append("b")], None, 3, 1)
    assert times.shape == (2, 3) and np.all(times >= 0)
    assert "".join(calls) == "ab" + "ab" * 3  # warm-up of each, then the steps in turn


def test_measure_latency_times_steps_after_warmup():
    calls = []

    def slow(batch):
        calls.append(batch)
        time.sleep(0.01)

    mean_ms, std_ms = measure_latency(slow, "batch", steps=3, warmup=2)
    assert len(calls) == 5 and set(calls) == {"batch"}
    assert 9.0 <= mean_ms < 500.0
    assert std_ms >= 0.0
    assert measure_latency(lambda batch: None, None, steps=1, warmup=0)[1] == 0.0
    with pytest.raises(UserError, match="steps"):
        measure_latency(slow, None, steps=0, warmup=0)


def test_parse_rows():
    assert parse_rows("all") == [RowSpec("keras", "auto"), RowSpec("onnx", "auto"), RowSpec("openvino", "auto")]
    assert parse_rows("keras:bfloat16, openvino, openvino:float32, openvino") == [
        RowSpec("keras", "bfloat16"), RowSpec("openvino", "auto"), RowSpec("openvino", "float32")]
    assert parse_rows("onnx,openvino", "bfloat16") == [RowSpec("onnx", "float32"), RowSpec("openvino", "bfloat16")]
    with pytest.raises(UserError, match="float32 only"):
        parse_rows("onnx:bfloat16")
    with pytest.raises(UserError, match="unknown runtime 'tensorrt'"):
        parse_rows("tensorrt")
    with pytest.raises(UserError, match="precision"):
        parse_rows("keras:int8")


def test_random_ct_batch_is_hu_like_and_differs_between_images():
    batch = random_ct_batch(3, 48, seed=0)
    assert batch.shape == (3, 48, 48, 1) and batch.dtype == np.float32
    assert batch.min() >= -1000 and batch.max() <= 400
    assert batch[0, 0, 0, 0] < -900  # air in the corner
    assert abs(float(batch[0].mean() - batch[1].mean())) > 1.0
    np.testing.assert_array_equal(batch, random_ct_batch(3, 48, seed=0))


def test_calibration_averages_the_batchnorm_statistics_of_its_small_passes():
    """The training-mode passes take CALIBRATION_SLICES slices each (memory); the statistics kept are
    the mean of the passes', not the last pass's: in training mode a pass uses only its own batch
    statistics, so calibrating on [c1, c2] gives each BatchNorm the mean of calibrating on c1 and on c2."""
    import keras

    from medfake.bench.latency import CALIBRATION_SLICES, calibrate_random_detector
    from medfake.models.detector import backbone_model, build_detector

    size = 32
    first = random_ct_batch(CALIBRATION_SLICES, size, seed=1)
    second = random_ct_batch(CALIBRATION_SLICES, size, seed=2)
    model = build_detector("MobileNetV3Large", size)
    weights = model.get_weights()

    def moving_means(calibration):
        model.set_weights(weights)
        calibrate_random_detector(model, random_ct_batch(4, size, seed=0), calibration)
        norms = [layer for layer in backbone_model(model).layers if isinstance(layer, keras.layers.BatchNormalization)]
        assert all(layer.momentum == norms[0].momentum != 0 for layer in norms)  # restored after
        return [np.asarray(layer.moving_mean) for layer in norms]

    both = moving_means(np.concatenate([first, second]))
    alone = [moving_means(first), moving_means(second)]
    assert len(both) > 10
    for mean, a, b in zip(both, *alone):
        np.testing.assert_allclose(mean, (a + b) / 2, rtol=1e-4, atol=1e-5)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(*alone)) > 1e-3  # the two passes differ


def test_report_lists_our_rows_beside_the_study():
    rows = [
        LatencyRow("ResNet50V2", "keras-float32 (baseline)", 24.75, 1900.0, 50.0, 1850.0, 4.2, 1.0, 0.0, (368.3, 87.2)),
        LatencyRow("ResNet50V2", "openvino-bfloat16", 24.75, 400.0, 10.0, 390.0, 20.0, 4.75, 0.02, (368.3, 87.2)),
        LatencyRow("ResNet50V2", "openvino-float32", 24.75, 800.0, 10.0, 790.0, 10.0, 2.38, 3e-5, (368.3, 87.2)),
    ]
    settings = {"size": 512, "batch": 8, "weights": "none", "steps": 10, "warmup": 2, "jit": False}
    text = render_markdown(rows, settings, "cpu", "Some CPU, 2 cores", "medfake bench latency --size 512",
                           ["ResNet50V2", "VGG19"], finished=False, load_averages=[1.5, 3.25])
    assert "# Inference latency — cpu" in text
    assert "`medfake bench latency --size 512`" in text
    assert "Some CPU, 2 cores" in text
    assert "368.3 ± 87.2" in text
    assert "| ResNet50V2 | openvino-bfloat16 | 24.75 | 400.0 ± 10.0 | 390.0 | 20.0 | 4.75× | 2.00e-02 |" in text
    assert "not measured yet: VGG19" in text
    summary = text.split("## Fastest runtime per model")[1]
    assert "| ResNet50V2 | 1,900.0 | openvino-bfloat16 | 400.0 ± 10.0 | 4.75× |" in summary
    assert "| openvino-float32 | 800.0 ± 10.0 | 2.38× |" in summary
    assert "load average 1.5–3.2" in text
    checks = text.split("## Checks")[1]
    assert "A float32 runtime ≥ 2× faster than Keras float32: 1 of 1." in checks
    assert "float32 rows within 1e-4 of Keras float32: 1 of 1." in checks
    slow = [rows[0], LatencyRow("ResNet50V2", "onnx-float32", 24.75, 1500.0, 9.0, 1490.0, 5.3, 1.27, 2e-4, (368.3, 87.2))]
    text = render_markdown(slow, settings, "cpu", "cpu", "cmd", ["ResNet50V2", "RegNetX040"], finished=True,
                           failures={"RegNetX040": "MemoryError"}, row_failures=["ResNet50V2 — onnx: export failed"])
    assert "failed: RegNetX040 (MemoryError)" in text
    assert "## Runtimes that could not run a backbone\n\n- ResNet50V2 — onnx: export failed" in text
    checks = text.split("## Checks")[1]
    assert "faster than Keras float32: 0 of 1 (not: ResNet50V2)" in checks
    assert "within 1e-4 of Keras float32: 0 of 1 (not: ResNet50V2 onnx-float32 (2.0e-04))" in checks


def test_bench_cli_writes_the_report(tmp_path, capfd):
    out = tmp_path / "benchmarks"
    code = cli.main(["bench", "latency", "--models", "MobileNetV3Large", "--size", "32", "--batch", "2",
                     "--steps", "2", "--warmup", "1", "--runtime", "keras:bfloat16", "--out", str(out)])
    assert code == 0
    report = (out / "latency-cpu.md").read_text()
    assert "--models MobileNetV3Large --size 32 --batch 2 --runtime keras:bfloat16" in report
    assert "| MobileNetV3Large | keras-float32 (baseline) | 3.62 |" in report
    assert "| MobileNetV3Large | keras-bfloat16 | 3.62 |" in report
    assert "325.4 ± 44.7" in report  # the study's T4 number beside ours
    assert "keras-bfloat16" in capfd.readouterr().out


@pytest.mark.slow
def test_bench_cli_logs_an_mlflow_run(tmp_path, tracking_store):
    code = cli.main(["bench", "latency", "--models", "MobileNetV3Large", "--size", "32", "--batch", "2",
                     "--steps", "1", "--warmup", "0", "--runtime", "keras", "--out", str(tmp_path), "--mlflow"])
    assert code == 0
    import mlflow

    runs = mlflow.search_runs(experiment_names=["medfake-benchmarks"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["medfake.stage"] == "bench"
    assert run.data.metrics["latency_ms/mobilenetv3large/keras-float32"] > 0
    assert run.data.params["size"] == "32"
    artifacts = [item.path for item in mlflow.MlflowClient().list_artifacts(run.info.run_id)]
    assert "latency-cpu.md" in artifacts


def test_bench_cli_errors_are_one_line(tmp_path, capsys):
    code = cli.main(["bench", "latency", "--models", "Xception", "--size", "32", "--out", str(tmp_path)])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error == "medfake bench: error: --size 32 is below the minimum input size of Xception (min 71)"
    assert cli.main(["bench", "latency", "--models", "LeNet", "--size", "32", "--out", str(tmp_path)]) == 2


@pytest.mark.parametrize(
    "module", ["models/detector.py", "bench/latency.py", "bench/latency_report.py", "models/runtime.py", "models/weights.py", "bench/__init__.py",
               "models/backbones.py", "core/device.py"]
)
def test_no_tensorflow_or_mlflow_import_at_module_level(module):
    tree = ast.parse((PACKAGE / module).read_text())
    imported = []
    for node in tree.body:  # module level only: imports inside functions are the rule
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            imported.append(node.module or "")
    assert imported, "parsed no imports: the check would be vacuous"
    assert not [name for name in imported if name.split(".")[0] in {"tensorflow", "mlflow"}]


def test_a_model_whose_process_dies_is_reported_as_failed(tmp_path, monkeypatch):
    from concurrent.futures.process import BrokenProcessPool

    import medfake.bench.latency as latency

    def dies(*args):
        raise BrokenProcessPool("killed")

    monkeypatch.setattr(latency, "_in_fresh_process", dies)
    code = cli.main(["bench", "latency", "--models", "VGG19", "--size", "32", "--out", str(tmp_path)])
    assert code == 0
    report = (tmp_path / "latency-cpu.md").read_text()
    assert "failed: VGG19 (the measuring process died (out of memory?))" in report


def test_a_runtime_that_cannot_export_is_reported_and_the_rest_measured(monkeypatch):
    import medfake.models.runtime as runtime
    from medfake.bench.latency import benchmark_backbone

    def no_onnx(model, out_dir, formats):
        raise UserError("ONNX export of x is not possible: tf2onnx left TensorFlow ops Erfc")

    monkeypatch.setattr(runtime, "export_detector", no_onnx)
    rows, unavailable = benchmark_backbone("MobileNetV3Large", 32, 2, [RowSpec("onnx", "auto"), RowSpec("keras", "bfloat16")],
                                           steps=1, warmup=0)
    assert [row.runtime for row in rows] == ["keras-float32 (baseline)", "keras-bfloat16"]
    assert unavailable == ["onnx: export failed: ONNX export of x is not possible: tf2onnx left TensorFlow ops Erfc"]
