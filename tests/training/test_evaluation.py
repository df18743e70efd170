"""Evaluation of a scored split: labels vs truth, label noise, breakdowns with CIs, predictions file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medfake.core import contract
from medfake.training import evaluation as ev

SETTINGS = ev.EvalSettings(threshold=0.5, bootstrap_samples=200, ci_level=0.95, seed=0)


def hand_frame() -> tuple[pd.DataFrame, np.ndarray]:
    """Eight slices where the ±5 labels and the truth differ on row 1 (labelled FM, untampered)."""
    rows = pd.DataFrame({
        "scan_id": ["a", "a", "b", "b", "c", "c", "d", "c"],
        "source": ["ctgan"] * 6 + ["lidc", "ctgan"],
        "slice": [10, 15, 20, 21, 30, 31, 5, 40],
        "label": [1, 1, 1, 1, 0, 0, 0, 0],
        "label_type": ["FM", "FM", "FB", "FB", "TM", "TB", "lidc_matched_z", "TB"],
        "truly_tampered": ["1", "0", "1", "1", "0", "0", "", "0"],
        "split": "test",
    })
    return rows, np.array([0.9, 0.2, 0.8, 0.4, 0.6, 0.1, 0.3, 0.05])


def test_truth_metrics_differ_from_label_metrics_by_hand():
    rows, scores = hand_frame()
    result = ev.evaluate_split("test", rows, scores, SETTINGS)
    keys = result.metrics()
    # ±5 labels: 13 of 16 fake/real pairs ranked right; truth: 14 of 15 (row 1 becomes a real slice).
    assert keys["test_auc"] == pytest.approx(13 / 16)
    assert keys["test_auc_true"] == pytest.approx(14 / 15)
    assert keys["test_recall"] == pytest.approx(2 / 4) and keys["test_recall_true"] == pytest.approx(2 / 3)
    assert keys["test_specificity_true"] == pytest.approx(4 / 5)
    assert keys["test_label_noise"] == pytest.approx(1 / 4)
    # scoring the truth exactly: 12 of 16 pairs right and the untampered fake ties the 4 reals
    assert keys["test_auc_ceiling"] == pytest.approx(14 / 16) == 1 - keys["test_label_noise"] / 2
    for name in (*contract.METRICS, "loss"):
        assert contract.true_key("test", name) in keys


def test_breakdowns_by_hand_and_absent_without_that_kind():
    rows, scores = hand_frame()
    keys = ev.evaluate_split("test", rows, scores, SETTINGS).metrics()
    assert keys["test_recall_fm"] == pytest.approx(0.5) and keys["test_recall_fb"] == pytest.approx(0.5)
    assert keys["test_fpr_tm"] == 1.0 and keys["test_fpr_tb"] == 0.0 and keys["test_fpr_lidc"] == 0.0
    assert keys["test_recall_fm_true"] == 1.0  # the one truly tampered FM slice is found
    no_fb = rows["label_type"] != "FB"
    keys = ev.evaluate_split("test", rows[no_fb], scores[no_fb.to_numpy()], SETTINGS).metrics()
    assert "test_recall_fb" not in keys and "test_recall_fb_ci_low" not in keys
    assert "test_recall_fm" in keys
    no_lidc = rows["source"] != "lidc"
    keys = ev.evaluate_split("test", rows[no_lidc], scores[no_lidc.to_numpy()], SETTINGS).metrics()
    assert "test_fpr_lidc" not in keys


def random_frame(n=120, seed=3, truth=True) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    label = np.arange(n) % 2
    kind = np.where(label == 1, rng.choice(["FM", "FB"], n), rng.choice(["TM", "TB", "lidc_random"], n))
    source = np.where(kind == "lidc_random", "lidc", "ctgan")
    tampered = np.where(label == 1, (rng.random(n) < 0.85).astype(int), 0).astype(str)
    tampered = np.where(source == "lidc", "", tampered) if truth else np.full(n, "")
    scores = np.clip(0.3 * label + 0.15 * (tampered == "1") + rng.normal(0.35, 0.2, n), 0, 1)
    rows = pd.DataFrame({"scan_id": [f"s{i // 8}" for i in range(n)], "source": source, "slice": np.arange(n),
                         "label": label, "label_type": kind, "truly_tampered": tampered})
    return rows, scores


def test_cis_bracket_every_value():
    rows, scores = random_frame()
    keys = ev.evaluate_split("test", rows, scores, SETTINGS).metrics()
    bracketed = [k[: -len("_ci_low")] for k in keys if k.endswith("_ci_low")]
    for name in ("test_auc", "test_auc_true", "test_recall_fm", "test_fpr_tm", "test_fpr_lidc", "test_recall_fb_true"):
        assert name in bracketed, name
    for name in bracketed:
        assert keys[f"{name}_ci_low"] <= keys[name] + 1e-12 <= keys[f"{name}_ci_high"] + 2e-12, name
    plain = ev.evaluate_split("val", rows, scores, SETTINGS, with_ci=False).metrics()
    assert "val_recall_fm" in plain and not any(k.endswith("_ci_low") for k in plain)


def test_real_data_has_no_truth_keys_and_empty_truth_column():
    rows, scores = random_frame(truth=False)
    result = ev.evaluate_split("test", rows, scores, SETTINGS)
    keys = result.metrics()
    assert not result.has_truth and result.label_noise is None
    assert not [k for k in keys if contract.TRUE_SUFFIX in k] and "test_label_noise" not in keys
    assert "test_auc_ceiling" not in keys and result.auc_ceiling is None
    assert "test_recall_fm" in keys and "test_auc" in keys
    assert tuple(result.predictions.columns) == contract.PREDICTION_COLUMNS
    assert set(result.predictions["truly_tampered"]) == {""}


def test_partial_truth_on_ctgan_rows_is_no_truth():
    rows, scores = hand_frame()
    rows.loc[0, "truly_tampered"] = ""
    assert ev.truth_labels(rows) is None
    rows, _ = hand_frame()
    assert ev.truth_labels(rows).tolist() == [1, 0, 1, 1, 0, 0, 0, 0]  # LIDC: never tampered


def test_predictions_frame_is_the_contract():
    rows, scores = hand_frame()
    frame = ev.evaluate_split("test", rows, scores, SETTINGS).predictions
    assert tuple(frame.columns) == contract.PREDICTION_COLUMNS
    assert frame["truly_tampered"].tolist() == ["1", "0", "1", "1", "0", "0", "", "0"]
    assert frame["predicted"].tolist() == [1, 0, 1, 0, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="scores"):
        ev.evaluate_split("test", rows, scores[:-1], SETTINGS)


def test_log_split_logs_keys_and_writes_predictions(tmp_path, tracking_store):
    import mlflow

    rows, scores = hand_frame()
    result = ev.evaluate_split("test", rows, scores, SETTINGS)
    with mlflow.start_run() as run:
        logged = ev.log_split(result, tmp_path / "art", title="demo")
    metrics = mlflow.get_run(run.info.run_id).data.metrics
    assert metrics["test_auc_true"] == pytest.approx(14 / 15) and set(logged) <= set(metrics)
    written = pd.read_csv(tmp_path / "art" / "predictions" / "test.csv", dtype={"truly_tampered": str},
                          keep_default_na=False)
    assert tuple(written.columns) == contract.PREDICTION_COLUMNS and len(written) == len(rows)
    assert (tmp_path / "art" / "plots" / "roc.png").is_file()


def test_auc_ceiling_of_the_study_rule_when_the_tamper_is_shorter_than_its_labels():
    # one FM label at slice 40: the study's ±5 rule labels 35…45 fake (11 slices), the tamper
    # really spans 37…43 (7); 11 untampered slices of the same scan are the real ones
    fakes = list(range(35, 46))
    rows = pd.DataFrame({
        "scan_id": "a", "source": "ctgan", "slice": fakes + list(range(60, 71)),
        "label": [1] * 11 + [0] * 11, "label_type": ["FM"] * 11 + ["matched"] * 11,
        "truly_tampered": ["1" if 37 <= z <= 43 else "0" for z in fakes] + ["0"] * 11, "split": "test",
    })
    truth = rows["truly_tampered"].astype(int).to_numpy()
    ceiling = 1 - (4 / 11) / 2
    assert ev.auc_ceiling(rows["label"].to_numpy(), truth) == pytest.approx(ceiling)
    # the perfect detector of the tamper reaches exactly the ceiling, not 1.0
    perfect = ev.evaluate_split("test", rows, truth * 0.9 + 0.05, SETTINGS, with_ci=False).metrics()
    assert perfect["test_auc"] == pytest.approx(ceiling) == perfect["test_auc_ceiling"]
    assert perfect["test_auc_true"] == pytest.approx(1.0)
    assert ev.auc_ceiling(np.ones(3), np.ones(3)) is None
