"""Scan's verdict rule pinned: a series is suspicious when at least ``min_slices`` consecutive
slices score P(fake) ≥ threshold (README "scan"; defaults 0.5 and 2), and the series-level rates."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from medfake.inference import scan
from medfake.training import verdict


def test_scan_cli_defaults_are_threshold_one_half_and_two_slices():
    parser = argparse.ArgumentParser()
    scan.add_arguments(parser)
    defaults = {action.dest: action.default for action in parser._actions}
    assert defaults["threshold"] == 0.5 and defaults["min_slices"] == 2
    assert (verdict.DEFAULT_THRESHOLD, verdict.DEFAULT_MIN_SLICES) == (0.5, 2)


@pytest.mark.parametrize(
    "scores, min_slices, suspicious",
    [
        ([0.1, 0.6, 0.2, 0.7, 0.1], 2, False),        # two slices over, never consecutive
        ([0.1, 0.6, 0.7, 0.2], 2, True),              # exactly min_slices consecutive
        ([0.5, 0.5], 2, True),                        # a score equal to the threshold counts (≥)
        ([0.4999, 0.9, 0.4999], 2, False),
        ([0.9, 0.9, 0.1, 0.9, 0.9], 3, False),        # 2 + 2 are not 3 consecutive
        ([0.1, 0.9, 0.9, 0.9], 3, True),              # a run that ends at the last slice
        ([0.9, 0.9, 0.9, 0.1], 3, True),              # a run that starts at the first slice
        ([0.9], 1, True),
        ([0.9], 2, False),
        ([0.0, 0.0, 0.0], 1, False),
    ],
)
def test_suspicious_needs_min_slices_consecutive_scores_at_or_over_the_threshold(scores, min_slices, suspicious):
    result = verdict.series_verdict(scores, threshold=0.5, min_slices=min_slices)
    assert result.suspicious is suspicious
    assert result.label == ("suspicious" if suspicious else "clean")


def test_verdict_ranges_peak_and_flagged_slices():
    result = verdict.series_verdict([0.2, 0.8, 0.1, 0.6, 0.95, 0.7, 0.3], threshold=0.5, min_slices=2)
    assert result.ranges == ((1, 1), (3, 5))
    assert result.counts == (False, True)
    assert (result.max_position, result.max_score) == (4, pytest.approx(0.95))
    assert result.flagged() == [(3, 5)]
    assert result.flagged([100, 101, 102, 103, 104, 105, 106]) == [(103, 105)]
    with pytest.raises(ValueError):
        verdict.series_verdict([], threshold=0.5, min_slices=2)


def test_threshold_moves_the_verdict():
    scores = [0.55, 0.58, 0.2]
    assert verdict.series_verdict(scores, threshold=0.5, min_slices=2).suspicious
    assert not verdict.series_verdict(scores, threshold=0.56, min_slices=2).suspicious
    assert verdict.suspicious_ranges(np.array(scores), 0.58) == [(1, 1)]


def test_rule_in_words_names_both_numbers():
    assert verdict.verdict_rule(0.5, 2) == "suspicious when at least 2 consecutive slices score P(fake) ≥ 0.5; clean otherwise"
    assert verdict.verdict_rule(0.7, 1) == "suspicious when at least 1 consecutive slice score P(fake) ≥ 0.7; clean otherwise"


def test_scan_level_rates_and_auc_by_hand():
    tampered = [True, True, True, False, False]
    suspicious = [True, False, True, True, False]
    level = verdict.scan_level(tampered, suspicious, max_scores=[0.9, 0.4, 0.8, 0.6, 0.1])
    assert (level["series"], level["tampered"], level["untampered"]) == (5, 3, 2)
    assert (level["detected"], level["false_alarms"]) == (2, 1)
    assert level["detection_rate"] == pytest.approx(2 / 3)
    assert level["false_alarm_rate"] == pytest.approx(1 / 2)
    assert level["auc"] == pytest.approx(5 / 6)  # tampered maxima over untampered: 2 + 1 + 2 of 6 pairs
    only_tampered = verdict.scan_level([True, True], [True, False], max_scores=[0.9, 0.2])
    assert only_tampered["false_alarm_rate"] is None and only_tampered["auc"] is None
    assert only_tampered["detection_rate"] == 0.5
    assert verdict.scan_level([False], [True])["detection_rate"] is None
    with pytest.raises(ValueError):
        verdict.scan_level([True, False], [True])
    with pytest.raises(ValueError):
        verdict.scan_level([True, False], [True, False], max_scores=[0.3])


def test_scan_metrics_names_and_absent_when_undefined():
    logged = verdict.scan_metrics([True, False], [True, True], [0.9, 0.8], ious=[0.5, 0.25])
    assert logged == {"scan_auc": 1.0, "scan_detection_rate": 1.0, "scan_false_alarm_rate": 1.0,
                      "scan_mean_iou": pytest.approx(0.375)}
    assert verdict.scan_metrics([True], [False], [0.2]) == {"scan_detection_rate": 0.0}


def test_z_iou_and_tamper_hits_by_hand():
    assert verdict.slice_set([(3, 5), (9, 8)]) == {3, 4, 5, 8, 9}
    assert verdict.z_iou([(10, 14)], [(12, 16)]) == pytest.approx(3 / 7)
    assert verdict.z_iou([], []) == 1.0 and verdict.z_iou([(1, 1)], []) == 0.0
    assert verdict.tamper_hits([(10, 12)], [(12, 20), (13, 20), (1, 10)]) == 2


def test_a_models_column_of_scores_gives_the_same_verdict_as_a_flat_profile():
    # model.predict returns (n, 1); the rule reads it as one profile in z order.
    flat = [0.2, 0.8, 0.1, 0.6, 0.95, 0.7, 0.3]
    column = np.array(flat)[:, None]
    assert verdict.suspicious_ranges(column, 0.5) == verdict.suspicious_ranges(flat, 0.5) == [(1, 1), (3, 5)]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated array-to-scalar conversion on the way
        result = verdict.series_verdict(column, threshold=0.5, min_slices=2)
    assert result == verdict.series_verdict(flat, threshold=0.5, min_slices=2)
    assert type(result.max_score) is float


def test_scan_level_takes_columns_and_0_1_numbers():
    tampered = [1, 1, 0, 0]                        # 0/1 integers, not booleans
    suspicious = np.array([[1.0], [0.0], [1.0], [0.0]])  # a column of 0./1. floats
    level = verdict.scan_level(tampered, suspicious, max_scores=np.array([[0.9], [0.3], [0.6], [0.1]]))
    assert (level["tampered"], level["untampered"], level["detected"], level["false_alarms"]) == (2, 2, 1, 1)
    assert level["auc"] == pytest.approx(3 / 4)
    column_truth = verdict.scan_level(np.array([[True], [False]]), [True, True])
    assert (column_truth["detected"], column_truth["false_alarms"]) == (1, 1)


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="^a series verdict needs at least one slice score$"):
        verdict.series_verdict(np.zeros(0))
    with pytest.raises(ValueError, match=r"^tampered \(2\) and suspicious \(1\) differ in length$"):
        verdict.scan_level([True, False], [True])
    with pytest.raises(ValueError, match=r"^tampered \(2\) and max_scores \(3\) differ in length$"):
        verdict.scan_level([True, False], [True, False], max_scores=[0.1, 0.2, 0.3])


# -- scan's default precision ("checked", issue 17) ----------------------------------------------
@pytest.mark.parametrize(
    "metrics, runtime, expected",
    [
        ({"max_abs_dp/openvino-bfloat16": 0.01}, "openvino", "bfloat16"),      # at the tolerance: allowed (≤)
        ({"max_abs_dp/openvino-bfloat16": 0.0100001}, "openvino", "float32"),  # a hair over: not
        ({"max_abs_dp/openvino-bfloat16": 0.002}, "keras", "float32"),          # another runtime's check does not count
        ({"max_abs_dp/keras-bfloat16": 0.002}, "keras", "bfloat16"),
        ({"max_abs_dp/openvino-float32": 1e-6}, "openvino", "float32"),         # no bfloat16 check recorded
        ({"max_abs_dp/onnx-bfloat16": 0.0}, "onnx", "float32"),                 # onnx runs float32 only
        (None, "openvino", "float32"),                                          # a model file: no train run
    ],
)
def test_reduced_precision_only_where_the_detectors_own_check_is_within_0_01(metrics, runtime, expected):
    from medfake.core.contract import REDUCED_PRECISION_TOLERANCE
    from medfake.inference.loading import checked_precision

    assert REDUCED_PRECISION_TOLERANCE == 0.01
    precision, why = checked_precision(metrics, runtime)
    assert precision == expected and why and "\n" not in why
    # a CPU without bfloat16 runs OpenVINO in float32 whatever the check said
    assert checked_precision(metrics, runtime, bfloat16_here=False)[0] == ("float32" if runtime == "openvino" else expected)


def test_the_checked_reason_names_the_figure_and_the_tolerance():
    from medfake.inference.loading import checked_precision

    assert checked_precision({"max_abs_dp/openvino-bfloat16": 0.0031}, "openvino") == (
        "bfloat16", "max_abs_dp/openvino-bfloat16 = 3.1e-03 ≤ 0.01 on this detector's test slices")
    assert checked_precision({"max_abs_dp/openvino-bfloat16": 0.034}, "openvino") == (
        "float32", "max_abs_dp/openvino-bfloat16 = 3.4e-02 > 0.01 on this detector's test slices")
    assert checked_precision({}, "openvino") == (
        "float32", "no max_abs_dp/openvino-bfloat16 recorded by this detector's train run")
    parser = argparse.ArgumentParser()
    scan.add_arguments(parser)
    assert {a.dest: a.default for a in parser._actions}["precision"] == "checked"
