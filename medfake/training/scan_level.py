"""Scan-level metrics of a split grouped by scan: the verdict a security team acts on (issue 12, item 4).

Every slice of each scan of the split is scored (the whole series, as ``medfake scan`` reads it, not
only the dataset's selected slices) and the scan's verdict follows ``medfake scan``'s own rule
(:mod:`medfake.training.verdict`: ≥ ``min_slices`` consecutive slices over the threshold). A scan is
tampered when the phantom's truth (``tampers.csv``) has extents for it, or, on real data, when its
labels hold an FB/FM row; LIDC series are untampered. Logged as ``{split}_scan_auc`` (scans ranked by
their highest slice score), ``_scan_detection_rate``, ``_scan_false_alarm_rate`` and, on the phantom,
``_scan_z_iou`` (mean z-IoU of the flagged ranges with the true extents over tampered scans).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medfake.core import contract
from medfake.core.config import Config
from medfake.core.errors import DICOMError, UserError
from medfake.data import ctgan, lidc
from medfake.data.build import resolve_inputs
from medfake.data.cache import Dataset
from medfake.io.privacy import deidentify
from medfake.io.transforms import resize
from medfake.training import verdict

ScoreFn = Callable[[np.ndarray], np.ndarray]  # int16 HU slices (n, S, S) → P(fake) (n,)


@dataclass
class ScoredScan:
    """One scan scored slice by slice along z."""

    scan_id: str                                       # the manifest's de-identified id
    tampered: bool
    scores: np.ndarray                                 # P(fake) per slice, in z order
    slices: list[int]                                  # file numbers where they run along z, else z index
    true_extents: list[tuple[int, int]] | None = None  # phantom truth (file numbers); None on real data


@dataclass
class ScanSource:
    """Where a scan of the dataset lives and what is known about it (never logged)."""

    scan_id: str
    open: Callable[[], object]                         # → DICOMSeries
    tampered: bool
    true_extents: list[tuple[int, int]] | None


def grouped_by_scan(dataset: Dataset) -> bool:
    """Whether the dataset was split by scan (``data.split`` by_scan / by_experiment)."""
    return dataset.info.get("split") in contract.SCAN_GROUPED_SPLITS


def _true_extents(truth_dir: Path | None) -> dict[tuple[str, str], list[tuple[int, int]]] | None:
    """(EXP1, uuid) → true tamper extents in file numbers, from the phantom's ``tampers.csv``."""
    path = truth_dir / "tampers.csv" if truth_dir is not None else None
    if path is None or not path.is_file():
        return None
    table = pd.read_csv(path, dtype={"experiment": str, "uuid": str})
    extents: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for exp, uuid, first, last in zip(table["experiment"], table["uuid"], table["z_first"], table["z_last"]):
        extents.setdefault((ctgan.normalize_experiment(exp), str(uuid)), []).append((int(first), int(last)))
    return extents


def locate_scans(cfg: Config, scan_ids: set[str]) -> list[ScanSource]:
    """The series of the given manifest scan ids, found the way preprocess named them."""
    inputs = resolve_inputs(cfg, progress=False)
    truth = _true_extents(inputs.truth_dir)
    labels = ctgan.read_labels(inputs.ctgan_root)
    labelled_fake = {(e, str(u)) for e, u, t in zip(labels["experiment"], labels["uuid"], labels["type"])
                     if t in contract.TAMPERED_TYPES}
    found = []
    for (exp, uuid), folder in ctgan.find_scans(inputs.ctgan_root).items():
        scan_id = deidentify(contract.SOURCE_CTGAN, uuid)
        if scan_id in scan_ids:
            extents = truth.get((exp, uuid), []) if truth is not None else None
            tampered = bool(extents) if truth is not None else (exp, uuid) in labelled_fake
            found.append(ScanSource(scan_id, lambda e=exp, u=uuid: ctgan.open_scan(inputs.ctgan_root, e, u),
                                    tampered, extents))
    if inputs.lidc_root is not None:
        for ref in lidc.find_series(inputs.lidc_root):
            scan_id = deidentify(contract.SOURCE_LIDC, f"lidc/{ref.series_uid}")
            if scan_id in scan_ids:
                found.append(ScanSource(scan_id, lambda r=ref: lidc.open_series(r), False,
                                        [] if truth is not None else None))
    return found


def score_series(series, score_fn: ScoreFn, image_size: int, batch_size: int) -> tuple[np.ndarray, list[int]]:
    """P(fake) of every slice along z (resized and stored as int16 HU, as the dataset was built)."""
    scores = []
    for start in range(0, len(series), batch_size):
        hu = series.read_hu(list(range(start, min(start + batch_size, len(series)))))
        images = np.clip(np.rint(resize(hu, image_size)), -32768, 32767).astype(np.int16)
        scores.append(np.asarray(score_fn(images), np.float64).reshape(-1))
    numbers = series.file_numbers if series.file_order in ("ascending", "descending") else range(len(series))
    return np.concatenate(scores), [int(n) for n in numbers]


def scan_metrics(split: str, scans: Sequence[ScoredScan], threshold: float = verdict.DEFAULT_THRESHOLD,
                 min_slices: int = verdict.DEFAULT_MIN_SLICES) -> dict[str, float]:
    """``{split}_scan_auc``, ``_scan_detection_rate``, ``_scan_false_alarm_rate``, ``_scan_z_iou``.

    A metric that is undefined (no tampered or no untampered scan; no truth) is absent, not zero.
    """
    verdicts = [verdict.series_verdict(s.scores, threshold, min_slices) for s in scans]
    level = verdict.scan_level([s.tampered for s in scans], [v.suspicious for v in verdicts],
                               [v.max_score for v in verdicts])
    ious = [verdict.z_iou(v.flagged(s.slices), s.true_extents) for s, v in zip(scans, verdicts)
            if s.tampered and s.true_extents]
    values = dict(zip(contract.SCAN_METRICS, (level["auc"], level["detection_rate"], level["false_alarm_rate"],
                                              float(np.mean(ious)) if ious else None)))
    return {contract.metric_key(split, name): float(v) for name, v in values.items() if v is not None}


def evaluate_scans(cfg: Config, dataset: Dataset, split: str, score_fn: ScoreFn, batch_size: int,
                   min_slices: int = verdict.DEFAULT_MIN_SLICES) -> dict[str, float]:
    """Score the whole series of every scan of ``split`` and return its scan-level metrics.

    Empty (with one line on stderr) when the split is not grouped by scan or the scans' series
    cannot be found any more (e.g. the data root moved since preprocess).
    """
    if not grouped_by_scan(dataset):
        return {}
    m = dataset.manifest
    wanted = set(m.loc[m["split"] == split, "scan_id"].astype(str))
    try:
        sources = locate_scans(cfg, wanted)
    except UserError as exc:
        print(f"scan-level metrics: none — the scans' series are not readable ({exc})", file=sys.stderr)
        return {}
    scored = []
    for source in sources:
        try:
            scores, slices = score_series(source.open(), score_fn, cfg.data.image_size, batch_size)
        except DICOMError as exc:
            print(f"scan-level metrics: scan {source.scan_id} left out ({exc})", file=sys.stderr)
            continue
        scored.append(ScoredScan(source.scan_id, source.tampered, scores, slices, source.true_extents))
    missing = len(wanted) - len({s.scan_id for s in scored})
    if missing:
        print(f"scan-level metrics: {missing} of {len(wanted)} {split} scans not found or unreadable",
              file=sys.stderr)
    return scan_metrics(split, scored, cfg.eval.threshold, min_slices) if scored else {}
