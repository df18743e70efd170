"""Promote's rule pinned: ``champion`` moves only when the challenger's group mean beats the
champion's by at least ``--min-delta`` on the same data digest, and only above the floor: chance
(0.5) for H and the six metrics (medfake/registry/promote.py)."""

from __future__ import annotations

import pytest

from medfake.registry import promote as pm


def _candidate(run_id, value, model="DenseNet121", seed="42", data="d1", setup="s1"):
    return pm.Candidate(run_id=run_id, model=model, seed=seed, stage="screen", data_digest=data,
                        setup_digest=setup, value=value)


def test_default_metric_is_validation_h_and_losses_are_lower_better():
    assert pm.DEFAULT_METRIC == "val_h"
    assert pm.metric_direction("val_h") == 1 and pm.metric_direction("test_auc") == 1
    for metric in ("val_loss", "test_ece", "latency_ms_mean", "latency_ms_std", "train_seconds"):
        assert pm.metric_direction(metric) == -1, metric
    # Keras' own history keys carry no split prefix: a bare "loss" is still lower-better.
    for metric in ("loss", "ece", "seconds"):
        assert pm.metric_direction(metric) == -1, metric


@pytest.mark.parametrize(
    "challenger, champion, min_delta, moved",
    [
        (0.875, 0.75, 0.0, True),
        (0.875, 0.75, 0.125, True),     # a gain exactly min-delta is enough (≥; binary fractions, no rounding)
        (0.875, 0.75, 0.1251, False),   # a smaller gain is not
        (0.75, 0.75, 0.0, False),       # a tie never moves the champion, even with min-delta 0
        (0.74, 0.75, 0.0, False),
    ],
)
def test_higher_is_better_metric_needs_a_gain_of_at_least_min_delta(challenger, champion, min_delta, moved):
    result, reason = pm.compare(challenger, champion, True, min_delta, 1, "val_h")
    assert result is moved
    assert "val_h" in reason


def test_reasons_say_why():
    assert pm.compare(0.95, 0.90, True, 0.01, 1, "val_h")[1] == (
        "val_h 0.9500 beats the champion's 0.9000 by 0.0500 ≥ min-delta 0.01")
    assert pm.compare(0.91, 0.90, True, 0.05, 1, "val_h")[1] == (
        "val_h 0.9100 beats the champion's 0.9000 by only 0.0100 < min-delta 0.05")
    assert pm.compare(0.80, 0.90, True, 0.0, 1, "val_h")[1] == "val_h 0.8000 does not beat the champion's 0.9000"
    # A tie is "does not beat", also with a positive min-delta (not "beats by only 0").
    assert pm.compare(0.90, 0.90, True, 0.05, 1, "val_h")[1] == "val_h 0.9000 does not beat the champion's 0.9000"
    assert pm.compare(0.99, 0.50, False, 0.0, 1, "val_h")[1] == (
        "the champion was evaluated on another data digest, so the metrics are not comparable")


def test_lower_is_better_metric_gains_by_going_down():
    assert pm.compare(0.25, 0.5, True, 0.25, -1, "val_loss")[0] is True
    assert pm.compare(0.375, 0.5, True, 0.25, -1, "val_loss")[0] is False
    assert pm.compare(0.625, 0.5, True, 0.0, -1, "val_loss")[0] is False


def test_another_data_digest_or_no_champion_score_never_moves_it():
    moved, reason = pm.compare(0.99, 0.50, False, 0.0, 1, "val_h")
    assert not moved and "another data digest" in reason
    moved, reason = pm.compare(0.99, None, True, 0.0, 1, "val_h")
    assert not moved and "no val_h" in reason
    assert pm.compare(0.99, float("nan"), True, 0.0, 1, "val_h")[0] is False


def test_groups_are_scored_by_the_mean_of_their_repeats_and_the_best_run_is_registered():
    runs = [
        _candidate("a1", 0.96, model="A"), _candidate("a2", 0.90, model="A", seed="43"),  # mean 0.93
        _candidate("b1", 0.94, model="B"),                                                # mean 0.94
        _candidate("c1", 0.99, model="C", data="d2"),                                     # other data
        _candidate("a3", 0.50, model="A", setup="s2"),                                    # other setup
    ]
    groups = pm.group_candidates(runs, 1)
    assert [(g.model, g.data_digest, g.setup_digest) for g in groups] == [
        ("C", "d2", "s1"), ("B", "d1", "s1"), ("A", "d1", "s1"), ("A", "d1", "s2")]
    a = groups[2]
    assert a.mean == pytest.approx(0.93) and a.std == pytest.approx(0.0424264, abs=1e-6)
    assert a.best.run_id == "a1" and groups[1].std == 0.0
    lower = pm.group_candidates([_candidate("x", 0.3, model="X"), _candidate("y", 0.2, model="Y")], -1)
    assert [g.model for g in lower] == ["Y", "X"] and lower[0].best.run_id == "y"


def test_tied_means_prefer_more_runs_then_the_better_best_run():
    runs = [_candidate("p1", 0.75, model="P"),
            _candidate("q1", 0.875, model="Q"), _candidate("q2", 0.625, model="Q", seed="43")]
    assert [g.model for g in pm.group_candidates(runs, 1)] == ["Q", "P"]
    runs = [_candidate("r1", 0.75, model="R"), _candidate("r2", 0.5, model="R", seed="43"),
            _candidate("s1", 0.875, model="S"), _candidate("s2", 0.375, model="S", seed="43")]
    assert [g.model for g in pm.group_candidates(runs, 1)] == ["S", "R"]


def test_the_seed_is_not_part_of_the_setup():
    base = {"model": "xception", "data.image_size": "64", "seed": "42", "weights_used": "none"}
    assert pm.setup_digest(base) == pm.setup_digest(base | {"seed": "43", "weights_used": "imagenet"})
    assert pm.setup_digest(base) != pm.setup_digest(base | {"data.image_size": "128"})
    assert len(pm.setup_digest(base)) == 12
    # The same params read back from the store in another order are the same setup.
    assert pm.setup_digest(dict(reversed(list(base.items())))) == pm.setup_digest(base)


def test_the_default_floor_is_chance_for_the_six_metrics_and_h_only():
    for metric in ("val_h", "val_auc", "test_accuracy", "val_precision", "val_recall", "val_specificity", "val_f1"):
        assert pm.default_floor(metric) == 0.5, metric
    for metric in ("val_loss", "latency_ms_mean", "params_m", "test_auc_true_ci_low", "val_height"):
        assert pm.default_floor(metric) is None, metric


def test_a_group_mean_must_be_strictly_above_the_floor():
    assert pm.above_floor(0.9, None, 1, "val_h") == (True, "")
    assert pm.above_floor(0.5001, 0.5, 1, "val_h") == (True, "")
    ok, why = pm.above_floor(0.5, 0.5, 1, "val_h")
    assert not ok and why == ("val_h 0.5000 is not above the floor 0.5 (chance) set by --min-score: "
                              "a detector no better than that does not become champion")
    assert not pm.above_floor(float("nan"), 0.5, 1, "val_h")[0]
    ok, why = pm.above_floor(0.7, 0.8, 1, "val_auc")
    assert not ok and why.startswith("val_auc 0.7000 is not above the floor 0.8 set by")
    assert pm.above_floor(0.2, 0.3, -1, "val_loss") == (True, "")
    ok, why = pm.above_floor(0.3, 0.3, -1, "val_loss")
    assert not ok and why.startswith("val_loss 0.3000 is not below the floor 0.3 set by")
