"""The series verdict shared by scan and train: ranges, the min-slices rule, z-IoU, scan-level rates and AUC."""

from __future__ import annotations

import numpy as np
import pytest

from medfake.training import verdict


def test_suspicious_ranges_and_iou():
    scores = np.array([0.1, 0.6, 0.7, 0.2, 0.5, 0.1, 0.9, 0.95])
    assert verdict.suspicious_ranges(scores, 0.5) == [(1, 2), (4, 4), (6, 7)]
    assert verdict.suspicious_ranges(np.zeros(4), 0.5) == []
    assert verdict.suspicious_ranges(np.ones(3), 0.5) == [(0, 2)]
    assert verdict.z_iou([(5, 9)], [(7, 11)]) == pytest.approx(3 / 7)
    assert verdict.z_iou([], [(1, 2)]) == 0.0
    assert verdict.z_iou([], []) == 1.0
    assert verdict.z_iou([(1, 2), (4, 4)], [(1, 4)]) == pytest.approx(3 / 4)
    assert verdict.z_iou([(9, 5)], [(7, 11)]) == pytest.approx(3 / 7)  # extents in either order


def test_series_verdict_needs_min_slices_consecutive():
    scores = [0.1, 0.6, 0.2, 0.7, 0.8, 0.1]
    two = verdict.series_verdict(scores, threshold=0.5, min_slices=2)
    assert two.ranges == ((1, 1), (3, 4)) and two.counts == (False, True)
    assert two.suspicious and two.label == "suspicious"
    assert two.flagged() == [(3, 4)]
    assert two.flagged([10, 11, 12, 13, 14, 15]) == [(13, 14)]
    assert (two.max_position, two.max_score) == (4, pytest.approx(0.8))
    three = verdict.series_verdict(scores, threshold=0.5, min_slices=3)
    assert not three.suspicious and three.label == "clean" and three.flagged() == []
    one = verdict.series_verdict(scores, threshold=0.5, min_slices=1)
    assert one.flagged() == [(1, 1), (3, 4)]
    assert not verdict.series_verdict([0.49, 0.2], 0.5, 1).suspicious
    with pytest.raises(ValueError):
        verdict.series_verdict([], 0.5, 2)


def test_verdict_rule_text():
    assert verdict.verdict_rule(0.5, 2) == "suspicious when at least 2 consecutive slices score P(fake) ≥ 0.5; clean otherwise"
    assert "at least 1 consecutive slice score" in verdict.verdict_rule(0.25, 1)


def test_tamper_hits_counts_extents_touched():
    assert verdict.tamper_hits([(4, 7)], [(3, 6), (10, 12)]) == 1
    assert verdict.tamper_hits([], [(3, 6)]) == 0
    assert verdict.tamper_hits([(0, 20)], [(3, 6), (10, 12)]) == 2


def test_scan_level_rates_and_auc():
    tampered = [True, True, False, False, False]
    suspicious = [True, False, True, False, False]
    max_scores = [0.9, 0.4, 0.6, 0.2, 0.1]
    level = verdict.scan_level(tampered, suspicious, max_scores)
    assert (level["series"], level["tampered"], level["untampered"]) == (5, 2, 3)
    assert (level["detected"], level["false_alarms"]) == (1, 1)
    assert level["detection_rate"] == 0.5 and level["false_alarm_rate"] == pytest.approx(1 / 3)
    # pairs (tampered, untampered) ranked right: 0.9 beats all 3, 0.4 beats 0.2 and 0.1 → 5 of 6
    assert level["auc"] == pytest.approx(5 / 6)
    assert verdict.scan_level(tampered, suspicious)["auc"] is None
    only_tampered = verdict.scan_level([True, True], [True, False], [0.9, 0.1])
    assert only_tampered["false_alarm_rate"] is None and only_tampered["auc"] is None
    with pytest.raises(ValueError):
        verdict.scan_level([True], [True, False])


def test_scan_metrics_names_and_absent_when_undefined():
    metrics = verdict.scan_metrics([True, False], [True, False], [0.8, 0.3], ious=[0.5, 0.7])
    assert metrics == {"scan_auc": 1.0, "scan_detection_rate": 1.0, "scan_false_alarm_rate": 0.0,
                       "scan_mean_iou": pytest.approx(0.6)}
    no_clean = verdict.scan_metrics([True], [False], [0.3])
    assert no_clean == {"scan_detection_rate": 0.0}
