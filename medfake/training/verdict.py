"""The series verdict of ``medfake scan`` and its series-level evaluation, shared with ``train``.

One rule decides whether a scan is suspicious: at least ``min_slices`` consecutive slices (along z)
score P(fake) ≥ ``threshold``. ``medfake scan`` applies it to the series it reads and ``train``
applies the same code to the whole series of each test scan (issue 12, item 4), so the scan-level
figures of a run are the ones a user of ``scan`` would get. It lives here, below inference,
because the layer order lets inference use training but not the other way round.

Pure numpy: no TensorFlow, no DICOM. Positions are indices into the score profile (in z order);
extents are inclusive (first, last) pairs in slice numbers (CT-GAN file numbers on the phantom).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from medfake.training.metrics import rank_auc

DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_SLICES = 2
SUSPICIOUS = "suspicious"
CLEAN = "clean"
# Metric names (after the `{split}_` prefix) of a split grouped by scan: DESIGN.md section 5
SCAN_METRIC_NAMES = {"auc": "scan_auc", "detection_rate": "scan_detection_rate",
                     "false_alarm_rate": "scan_false_alarm_rate", "mean_iou": "scan_mean_iou"}


def suspicious_ranges(scores, threshold: float) -> list[tuple[int, int]]:
    """Inclusive (first, last) positions of runs of consecutive scores ≥ threshold."""
    above = np.asarray(scores, dtype=np.float64).reshape(-1) >= threshold
    edges = np.diff(np.concatenate(([0], above.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return list(zip(starts.tolist(), ends.tolist()))


def verdict_rule(threshold: float, min_slices: int) -> str:
    """The rule in words, printed with every scan report."""
    return (f"suspicious when at least {min_slices} consecutive slice{'s' if min_slices != 1 else ''} "
            f"score P(fake) ≥ {threshold:g}; clean otherwise")


@dataclass(frozen=True)
class SeriesVerdict:
    """The rule applied to one score profile."""

    ranges: tuple[tuple[int, int], ...]   # every run ≥ threshold, positions in the profile
    counts: tuple[bool, ...]              # per range: long enough (≥ min_slices) to count
    max_position: int                     # position of the highest score
    max_score: float

    @property
    def suspicious(self) -> bool:
        return any(self.counts)

    @property
    def label(self) -> str:
        return SUSPICIOUS if self.suspicious else CLEAN

    def flagged(self, slices: Sequence[int] | None = None) -> list[tuple[int, int]]:
        """The ranges that count, as (first, last) slice numbers (positions when ``slices`` is None)."""
        number = (lambda p: int(slices[p])) if slices is not None else int
        return [(number(first), number(last)) for (first, last), ok in zip(self.ranges, self.counts) if ok]


def series_verdict(scores, threshold: float = DEFAULT_THRESHOLD,
                   min_slices: int = DEFAULT_MIN_SLICES) -> SeriesVerdict:
    """The verdict of one series from its scores in z order (at least one score)."""
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("a series verdict needs at least one slice score")
    ranges = suspicious_ranges(values, threshold)
    top = int(np.argmax(values))
    return SeriesVerdict(tuple(ranges), tuple(last - first + 1 >= min_slices for first, last in ranges),
                         top, float(values[top]))


def slice_set(extents: Iterable[tuple[int, int]]) -> set[int]:
    """Every slice number covered by inclusive (first, last) extents (either order)."""
    return {z for first, last in extents for z in range(min(first, last), max(first, last) + 1)}


def z_iou(flagged: Iterable[tuple[int, int]], true: Iterable[tuple[int, int]]) -> float:
    """Intersection over union, in slices along z, of flagged ranges and true tamper extents."""
    a, b = slice_set(flagged), slice_set(true)
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def tamper_hits(flagged: Iterable[tuple[int, int]], extents: Sequence[tuple[int, int]]) -> int:
    """How many true tamper extents overlap at least one flagged range."""
    marked = slice_set(flagged)
    return sum(bool(slice_set([extent]) & marked) for extent in extents)


def scan_level(tampered, suspicious, max_scores=None) -> dict:
    """Series-level counts and rates: each scan is one sample, tampered = positive.

    ``detection_rate`` = suspicious tampered / tampered, ``false_alarm_rate`` = suspicious
    untampered / untampered (None when that group is empty). ``auc`` ranks scans by their highest
    slice score (``max_scores``; None without them or when one group is empty).
    """
    truth = np.asarray(tampered, dtype=bool).reshape(-1)
    called = np.asarray(suspicious, dtype=bool).reshape(-1)
    if truth.shape != called.shape:
        raise ValueError(f"tampered ({truth.size}) and suspicious ({called.size}) differ in length")
    positives, negatives = int(truth.sum()), int((~truth).sum())
    detected, false_alarms = int((truth & called).sum()), int((~truth & called).sum())
    auc = None
    if max_scores is not None:
        ranked = np.asarray(max_scores, dtype=np.float64).reshape(-1)
        if ranked.shape != truth.shape:
            raise ValueError(f"tampered ({truth.size}) and max_scores ({ranked.size}) differ in length")
        if positives and negatives:
            auc = float(rank_auc(truth.astype(np.float64), ranked))
    return {
        "series": int(truth.size), "tampered": positives, "untampered": negatives,
        "detected": detected, "false_alarms": false_alarms,
        "detection_rate": detected / positives if positives else None,
        "false_alarm_rate": false_alarms / negatives if negatives else None,
        "auc": auc,
    }


def scan_metrics(tampered, suspicious, max_scores, ious: Sequence[float] | None = None) -> dict[str, float]:
    """The scan-level metrics a run logs (names of SCAN_METRIC_NAMES, before the `{split}_` prefix).

    A metric that is undefined (no tampered or no untampered scan; no IoU) is absent, not zero.
    """
    level = scan_level(tampered, suspicious, max_scores)
    level["mean_iou"] = float(np.mean(ious)) if ious else None
    return {name: float(level[key]) for key, name in SCAN_METRIC_NAMES.items() if level[key] is not None}
