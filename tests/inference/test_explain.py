"""`medfake explain`: bad input is one line and exit 2; a dataset split gives overlays, CSV, JSON and metrics."""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest
from tiny_data import tiny_dataset

from medfake.cli import main
from medfake.inference import explain
from medfake.models.detector import build_detector


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("medfake explain")]  # MLflow's own INFO lines aside
    assert len(ours) == 1 and "Traceback" not in err
    return ours[0]


def test_a_missing_run_is_one_line(tracking_store, capsys):
    err = _one_line_error(capsys, ["explain", "--model", "0123456789abcdef0123456789abcdef", "--no-mlflow"])
    assert "medfake explain: error: --model runs:/0123456789abcdef0123456789abcdef/model" in err


def test_a_model_without_a_convolutional_block_is_one_line(tracking_store, tmp_path, capsys):
    inputs = keras.Input((32, 32, 1), name="hu")
    dense = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(inputs)))
    dense.save(tmp_path / "dense.keras")
    err = _one_line_error(capsys, ["explain", "--model", str(tmp_path / "dense.keras")])
    assert "no convolutional block" in err and "histogram baseline" in err


def test_the_histogram_baseline_is_one_line(tracking_store, capsys):
    import mlflow

    class Histogram(mlflow.pyfunc.PythonModel):  # the baseline's flavour: a pyfunc, no Keras
        def predict(self, context, model_input, params=None):  # noqa: ARG002
            return np.zeros(len(model_input))

    with mlflow.start_run() as run:
        mlflow.pyfunc.log_model(name="model", python_model=Histogram(), pip_requirements=[])
    err = _one_line_error(capsys, ["explain", "--model", run.info.run_id, "--no-mlflow"])
    assert "not a Keras CNN" in err and "baseline" in err


def test_bad_arguments_are_one_line(tracking_store, tmp_path, capsys):
    detector = build_detector("VGG19", 32, weights=None, head_units=(8, 4))
    detector.save(tmp_path / "vgg.keras")
    assert "--methods 'lime'" in _one_line_error(capsys, ["explain", "--model", str(tmp_path / "vgg.keras"), "--methods", "lime"])
    assert "does not exist" in _one_line_error(capsys, ["explain", str(tmp_path / "nowhere"), "--model", str(tmp_path / "vgg.keras")])
    assert "--mlflow needs" in _one_line_error(capsys, ["explain", "--model", str(tmp_path / "vgg.keras"), "--mlflow"])


def test_window_is_read_back_from_the_detector():
    detector = build_detector("VGG19", 32, weights=None, window=(-700.0, 700.0), head_units=(8, 4))
    center, width = explain._window_of(detector)
    assert center == pytest.approx(-700.0) and width == pytest.approx(700.0)


@pytest.fixture
def positioned_dataset(tmp_path):
    """The tiny dataset (bright square at rows/columns 8..15 in fakes) with its positions in the manifest."""
    folder = tmp_path / "datasets" / "tinydigest"
    dataset = tiny_dataset(folder, n=32, size=32, phantom_like=True)
    manifest = dataset.manifest.copy()
    fake = (manifest["label"] == 1) & (manifest["truly_tampered"] == "1")
    manifest["x"] = np.where(fake, "11.50", "")
    manifest["y"] = np.where(fake, "11.50", "")
    manifest["radius"] = np.where(fake, "4.00", "")
    manifest.to_csv(folder / "manifest.csv", index=False)
    return folder


def test_explain_a_split_writes_overlays_csv_json_and_metrics(tracking_store, tmp_path, positioned_dataset, capsys):
    detector = build_detector("VGG19", 32, weights=None, head_units=(8, 4))
    detector.save(tmp_path / "vgg.keras")
    out, records_file = tmp_path / "out", tmp_path / "records.json"
    code = main(["explain", "--model", str(tmp_path / "vgg.keras"), "--set", f"data.cache_dir={tmp_path / 'datasets'}",
                 "--data", "tinydigest", "--out", str(out), "--json", str(records_file), "--top-k", "2", "--quiet"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "test_cam_hit_rate" in printed and "test_occlusion_hit_rate_chance" in printed
    records = json.loads(records_file.read_text())
    manifest = pd.read_csv(positioned_dataset / "manifest.csv", keep_default_na=False, dtype=str)
    test_rows = manifest[manifest["split"] == "test"]
    assert len(records) == len(test_rows)
    assert all(set(r) == set(explain.RECORD_KEYS) for r in records)
    scored = [r for r in records if r["truth_xy"] is not None]
    unscored = [r for r in records if r["truth_xy"] is None]
    assert scored and unscored
    assert all(isinstance(r["hit"], bool) and 0 <= r["energy"] <= 1 and r["radius"] == 4.0 for r in scored)
    assert all(r["hit"] is None and r["energy"] is None for r in unscored)   # counted, never misses
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_localisation_scored"] == len(scored)
    assert -1.0 <= metrics.get("test_cam_randomisation_spearman", 0.0) <= 1.0  # absent when a random map is all zero
    csv_rows = pd.read_csv(out / "slices.csv")
    assert list(csv_rows.columns) == list(explain.CSV_COLUMNS) and len(csv_rows) == len(records)
    assert (out / "montage.png").is_file()
    assert len(list((out / "overlays").glob("*.png"))) == len(records)
