"""The report's localisation part (issue 13): Table 1's columns where logged, one overlay per model on one slice."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from tiny_data import tiny_dataset

from medfake.data.cache import load_dataset
from medfake.study import localisation_report as lr
from medfake.study.report import _download


def selection_of(*entries):
    return SimpleNamespace(ranked=[SimpleNamespace(model=m, run_id=r, metrics=metrics) for m, r, metrics in entries],
                           data_digest="tinydigest")


def test_columns_only_where_a_run_logged_them():
    selection = selection_of(
        ("VGG19", "r1", {"test_cam_hit_rate": 0.6, "test_cam_hit_rate_chance": 0.012, "test_cam_energy": 0.2,
                         "test_cam_randomisation_spearman": 0.05, "test_localisation_scored": 75.0}),
        ("ResNet50V2", "r2", {"test_cam_hit_rate": 0.25, "test_localisation_scored": 75.0}),
        ("baseline", "r3", {"test_accuracy": 0.7}),
    )
    frame = lr.with_columns(pd.DataFrame({"model": ["VGG19", "ResNet50V2", "baseline"], "run_id": ["r1", "r2", "r3"]}),
                            selection)
    assert frame.loc[0, "test_cam_hit_rate"] == 0.6 and math.isnan(frame.loc[2, "test_cam_hit_rate"])
    text = lr.table_markdown(frame)
    assert "Grad-CAM hit rate" in text and "Grad-CAM chance" in text and "randomisation ρ" in text
    assert "0.600" in text and "0.250" in text and "| 75 |" in text
    assert "Occlusion" not in text and "hit FM" not in text   # no run logged them
    assert "baseline" not in text                              # nothing to show for it
    older = lr.with_columns(pd.DataFrame({"model": ["VGG19"], "run_id": ["r3"]}), selection)
    assert lr.table_markdown(older) is None


def positioned(folder):
    dataset = tiny_dataset(folder, n=32, size=32, phantom_like=True)
    manifest = dataset.manifest
    fake = (manifest["label"] == 1) & (manifest["truly_tampered"] == "1")
    manifest["x"] = np.where(fake, "11.50", "")   # the tiny fakes' bright square, rows/columns 8..15
    manifest["y"] = np.where(fake, "11.50", "")
    manifest["radius"] = np.where(fake, "4.00", "")
    manifest.to_csv(folder / "manifest.csv", index=False)
    return load_dataset(folder)


def predictions_of(dataset, scores: dict[int, float]):
    test = dataset.manifest[dataset.manifest["split"] == "test"]
    frame = test[["scan_id", "slice", "label", "label_type"]].copy()
    frame["score"] = [scores.get(int(s), 0.5) for s in frame["slice"]]
    return frame


def test_common_slice_is_a_positioned_fake_every_run_predicted(tmp_path):
    dataset = positioned(tmp_path / "data" / "tinydigest")
    test = dataset.manifest[dataset.manifest["split"] == "test"]
    scored = test[(test["label"] == 1) & (test["x"] != "")]
    best, other = int(scored["slice"].iloc[-1]), int(scored["slice"].iloc[0])
    a = predictions_of(dataset, {best: 0.9, other: 0.8})
    b = predictions_of(dataset, {best: 0.9, other: 0.6})
    row = lr.common_slice({"A": a, "B": b}, dataset.manifest)   # mean 0.9 beats 0.7
    assert int(row["slice"]) == best and row["label_type"] in ("FM", "FB")
    # B did not predict `best`: the common slice is another one
    row = lr.common_slice({"A": a, "B": b[b["slice"] != best]}, dataset.manifest)
    assert int(row["slice"]) != best and row["x"] != ""
    unpositioned = dataset.manifest.assign(x="", y="")
    assert lr.common_slice({"A": a}, unpositioned) is None


@pytest.mark.slow
def test_section_draws_one_overlay_per_loadable_model(tracking_store, tmp_path):
    import mlflow

    from medfake.models.detector import build_detector

    dataset = positioned(tmp_path / "data" / "tinydigest")
    test = dataset.manifest[dataset.manifest["split"] == "test"]
    target = int(test[(test["label"] == 1) & (test["x"] != "")]["slice"].iloc[0])
    entries = []
    for model in ("VGG19", "baseline"):
        with mlflow.start_run() as run:
            mlflow.log_text(predictions_of(dataset, {target: 0.99}).to_csv(index=False), "predictions/test.csv")
            if model == "VGG19":   # the baseline's run has no Keras model: left out of the figure
                mlflow.keras.log_model(build_detector("VGG19", 32, weights=None, head_units=(8, 4)), name="model")
        entries.append((model, run.info.run_id, {"test_cam_hit_rate": 0.5, "test_cam_hit_rate_chance": 0.05,
                                                 "test_localisation_scored": 3.0}))
    selection = selection_of(*entries)
    frame = lr.with_columns(pd.DataFrame({"model": [e[0] for e in entries], "run_id": [e[1] for e in entries]}),
                            selection)
    figures = tmp_path / "report" / "figures"
    params = {"data.cache_dir": str(tmp_path / "data"), "data.window.center": "-600", "data.window.width": "1500"}
    text = lr.section(frame, selection, figures, tmp_path / "scratch", params, _download)
    assert "Grad-CAM hit rate" in text and f"figures/{lr.FIGURE_NAME}" in text
    assert f"slice {target} " in text
    assert (figures / lr.FIGURE_NAME).stat().st_size > 5_000
    # without the dataset in the local cache: the table, and a note instead of the figure
    missing = lr.section(frame, selection, figures, tmp_path / "scratch2", {"data.cache_dir": str(tmp_path / "none")},
                         _download)
    assert "Grad-CAM hit rate" in missing and "not in the local cache" in missing
