"""`medfake bench precision`: the table of trained detectors' max |Δp| and scan's choice for each."""

from __future__ import annotations

from medfake import cli


def _train_like_run(model: str, deltas: dict[str, float], auc: float) -> str:
    """A run carrying what the train step logs about a detector (tag, params, metrics)."""
    import mlflow

    mlflow.set_experiment("medfake-bench-precision-test")
    with mlflow.start_run() as run:
        mlflow.set_tag("medfake.model", model)
        mlflow.log_params({"data.image_size": 96, "precision_used": "float32"})
        mlflow.log_metrics({"test_auc": auc, **{f"max_abs_dp/{k}": v for k, v in deltas.items()}})
    return run.info.run_id


def test_the_table_says_which_detectors_scan_runs_in_bfloat16(tracking_store, tmp_path):
    ok = _train_like_run("Xception", {"keras-bfloat16": 0.004, "openvino-float32": 2e-6, "openvino-bfloat16": 0.01}, 0.846)
    off = _train_like_run("VGG19", {"keras-bfloat16": 0.03, "openvino-float32": 3e-6, "openvino-bfloat16": 0.0101}, 0.61)
    none = _train_like_run("ResNet50V2", {"keras-bfloat16": 0.002, "openvino-float32": 1e-6}, 0.7)  # a CPU without bf16
    report = tmp_path / "precision.md"
    args = ["bench", "precision", "--models", "none", "--run", ok, "--run", off, "--run", none, "--report", str(report)]
    assert cli.main(args) == 0
    text = report.read_text()
    assert f"| Xception | `{ok[:8]}` | 96² | float32 | 0.846 | 4.0e-03 | 2.0e-06 | 1.0e-02 | – | bfloat16 |" in text
    assert f"| VGG19 | `{off[:8]}` | 96² | float32 | 0.610 | 3.0e-02 | 3.0e-06 | 1.0e-02 | – | float32 |" in text
    assert f"| ResNet50V2 | `{none[:8]}` | 96² | float32 | 0.700 | 2.0e-03 | 1.0e-06 | – | – | – |" in text
    assert "**OpenVINO bfloat16 within 0.01 of Keras float32 for 1 of 2 detectors**" in text
    assert "synthetic CT phantom" in text


def test_bad_options_are_one_line(tracking_store, tmp_path, capsys):
    assert cli.main(["bench", "precision", "--models", "none", "--report", str(tmp_path / "r.md")]) == 2
    assert cli.main(["bench", "precision", "--models", "none", "--run", "0" * 32, "--report", str(tmp_path / "r.md")]) == 2
    assert cli.main(["bench", "precision", "--models", "LeNet", "--report", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "Traceback" not in "\n".join(err)
    assert "give at least one --run" in err[0] and "no such MLflow run" in err[1] and "unknown backbone 'LeNet'" in err[2]
    assert not (tmp_path / "r.md").exists()
