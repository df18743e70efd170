"""The train run's markdown description: model, data, headline test metrics with CIs, next steps."""

from __future__ import annotations

from medfake.core.config import load_config
from medfake.training.run_note import run_note

from tiny_data import TINY


def test_note_names_model_data_and_metrics_with_cis():
    cfg = load_config("quickstart", TINY)
    metrics = {"test_auc": 0.91, "test_auc_ci_low": 0.85, "test_auc_ci_high": 0.96, "test_h": 0.8,
               "test_auc_true": 0.93}
    note = run_note("Xception", 42, cfg, "abc123", {"train": 30, "val": 6, "test": 12}, metrics)
    assert note.startswith("**Xception**, seed 42")
    assert "phantom" in note and "`abc123`" in note and "train 30, val 6, test 12 slices" in note
    assert "| auc | 0.910 (95% CI 0.850–0.960) |" in note
    assert "| h | 0.800 |" in note and "| auc vs true extents | 0.930 |" in note
    assert "accuracy" not in note.split("Next:")[0]  # a metric the run did not log is left out
    assert "predictions/test.csv" in note
