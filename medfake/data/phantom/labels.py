"""Label plans of the CT-GAN-style scans: which scans, which TB/TM/FB/FM labels, where, and how far
each tamper truly reaches along z (sometimes inside, sometimes beyond the study's ±5 slices).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from medfake.core.contract import LABEL_TYPES as CONTRACT_LABEL_TYPES, TAMPERED_TYPES
from medfake.core.errors import UserError
from medfake.data.phantom.anatomy import ScanAnatomy, cube_size, make_anatomy, sample_lung_point, spawn_rng


EXPERIMENTS = ("exp1", "exp2")  # keys in truth/*.csv; labels_<key>.csv
LABEL_TYPES = tuple(CONTRACT_LABEL_TYPES)  # TB, TM, FB, FM: the order of counts and summaries
FAKE_TYPES = tuple(t for t in LABEL_TYPES if t in TAMPERED_TYPES)  # FB, FM
TRUE_TYPES = tuple(t for t in LABEL_TYPES if t not in TAMPERED_TYPES)  # TB, TM

SLICE_RADIUS = 5             # the study's ±5 neighbours around a label
# Slices above/below the label that a tamper really reaches, and how often each value is drawn:
# mostly about ±5 (the study's "nearly all" neighbours), sometimes narrower or wider (Figure 1).
TAMPER_HALF_EXTENT = (2, 3, 4, 5, 6, 7, 8)
TAMPER_HALF_EXTENT_WEIGHTS = (1, 1, 2, 3, 3, 2, 2)

LABEL_ZONE = (0.24, 0.72)  # label centres lie where both lungs are large


@dataclass
class Label:
    """A label row plus what the phantom needs to realise it."""

    type: str
    slice: int
    row: int
    col: int
    radius_mm: float
    hu: float
    z_first: int = -1  # FB/FM: the true extent of the tamper
    z_last: int = -1


def _separation(labels: Sequence[Label]) -> int:
    """Slices every two label centres of a scan keep apart, whatever their types.

    Enough for: no TB/TM ±5 window touches a tamper's true extent, and tampers do not touch.
    It depends on the scan's extents only, not on which label is which, so the z distribution of
    FB/FM labels equals that of TB/TM labels (matched negatives differ in tampering, not anatomy).
    """
    reach = [max(x.slice - x.z_first, x.z_last - x.slice) for x in labels if x.type in FAKE_TYPES]
    if not reach:
        return 3
    return max(SLICE_RADIUS + 1 + max(reach), 2 * max(reach) + 2)


def _plan_labels(a: ScanAnatomy, types: Sequence[str], rng: np.random.Generator, cube_half: int,
                 tries: int = 300) -> list[Label]:
    """Place labels of the given types in one scan; drop a label when no placement is found.

    Centres are drawn as a set kept apart by :func:`_separation` and the types are then shuffled
    over them. Tamper extents follow TAMPER_HALF_EXTENT_WEIGHTS; only when that finds no room
    (short volumes) are they capped at 4 slices before a label is dropped.
    """
    g = a.geometry
    types = list(types)
    max_radius = min(8.0, 0.55 * cube_half * g.pixel_mm)
    lo = max(a.slice_of_t(LABEL_ZONE[0]), 0)
    hi = min(a.slice_of_t(LABEL_ZONE[1]), g.slices - 1)
    extents = np.asarray(TAMPER_HALF_EXTENT)
    weights = np.asarray(TAMPER_HALF_EXTENT_WEIGHTS, dtype=float)
    capped = np.where(extents <= 4, weights, 0.0)
    while types:
        for attempt in range(2 * tries):
            p = weights if attempt < tries else capped
            centres = np.sort(rng.integers(lo, hi + 1, len(types)))
            labels = []
            for kind, centre in zip(rng.permutation(types), centres):
                radius, hu = rng.uniform(3.0, max(max_radius, 3.0)), rng.uniform(20, 100)
                label = Label(str(kind), int(centre), 0, 0, radius, hu)
                if kind in FAKE_TYPES:
                    below, above = (int(v) for v in rng.choice(extents, 2, p=p / p.sum()))
                    if kind == "FB":  # the in-painting must cover the real nodule
                        reach = math.ceil(radius / g.slice_mm + 0.5)
                        below, above = max(below, reach), max(above, reach)
                    label.z_first, label.z_last = max(int(centre) - below, 0), min(int(centre) + above, g.slices - 1)
                labels.append(label)
            if np.all(np.diff(centres) >= _separation(labels)) and _place_in_lungs(a, labels, rng, cube_half):
                return labels
        # no room: drop one label of the larger group (a TB/TM one on a tie, so the tamper stays)
        trues = [i for i, k in enumerate(types) if k in TRUE_TYPES]
        fakes = [i for i, k in enumerate(types) if k in FAKE_TYPES]
        types.pop((trues if len(trues) >= len(fakes) else fakes)[-1])
    return []


def _place_in_lungs(a: ScanAnatomy, labels: Sequence[Label], rng: np.random.Generator, cube_half: int) -> bool:
    """Give each label an in-plane lung site (nodules keep a margin from other tissue)."""
    g = a.geometry
    corner = float(g.coordinates_mm[0])
    for label in labels:
        margin = (label.radius_mm if label.type != "TB" else 0.0) + 2 * g.pixel_mm
        point = sample_lung_point(a, a.t_of_slice(label.slice), rng, margin, tries=60)
        if point is None:
            return False
        label.col = int(np.clip(round((point[0] - corner) / g.pixel_mm), cube_half, g.size - cube_half))
        label.row = int(np.clip(round((point[1] - corner) / g.pixel_mm), cube_half, g.size - cube_half))
    return True


def _alternating(rng: np.random.Generator, pair: tuple[str, str]) -> Iterator[str]:
    """Alternate the two types from a random start: the counts stay balanced."""
    return itertools.cycle(pair if rng.integers(0, 2) else pair[::-1])


def experiment_sizes(scans: int) -> tuple[int, int]:
    second = max(1, round(0.2 * scans))
    return scans - second, second


@dataclass
class ScanPlan:
    """One CT-GAN-style scan before rendering: who it is and where its labels go."""

    experiment: str
    uuid: str
    anatomy: ScanAnatomy
    labels: list[Label]


def patient_anatomy(seed: int, dataset: int, number: int, size: int, slices: int) -> ScanAnatomy:
    """Anatomy of patient ``number`` of a dataset (1 CT-GAN, 2 LIDC); ±10 % slices around nominal."""
    rng = spawn_rng(seed, 3, dataset, number)
    n_slices = int(round(slices * rng.uniform(0.9, 1.1)))
    return make_anatomy(int(rng.integers(2**62)), size, n_slices, nominal_slices=slices)


def plan_ctgan(scans: int, size: int, slices: int, seed: int) -> tuple[list[ScanPlan], str]:
    """Uuids (~80/20 over the experiments, one shared) and the labels of every scan."""
    rng = spawn_rng(seed, 1)
    n1, n2 = experiment_sizes(scans)
    pool = [str(u) for u in rng.choice(np.arange(1000, 10000), size=n1 + n2 - 1, replace=False)]
    uuids1 = sorted(pool[:n1])
    shared = uuids1[int(rng.integers(0, n1))]
    keys = [("exp1", u) for u in uuids1] + [("exp2", u) for u in sorted(pool[n1:] + [shared])]
    cube_half = cube_size(size) // 2
    fake_types = _alternating(rng, ("FM", "FB"))
    true_types = _alternating(rng, ("TB", "TM"))
    plans = []
    for number, (exp, uuid) in enumerate(keys):
        scan_rng = spawn_rng(seed, 2, EXPERIMENTS.index(exp), int(uuid))
        # the same uuid is the same patient in both experiments: same anatomy and noise
        anatomy = patient_anatomy(seed, 1, int(uuid), size, slices)
        # like CT-GAN: most scans tampered (1-2 FB/FM), each also with TB/TM labels elsewhere
        tampered = number < 2 or scan_rng.random() < 0.85
        n_fake = (1 + int(number >= 2 and scan_rng.random() < 0.4)) if tampered else 0
        n_true = 1 if tampered else 1 + int(scan_rng.random() < 0.4)
        types = [next(fake_types) for _ in range(n_fake)] + [next(true_types) for _ in range(n_true)]
        plans.append(ScanPlan(exp, uuid, anatomy, _plan_labels(anatomy, types, scan_rng, cube_half)))
    _ensure_all_types(plans, slices)
    return plans, shared


def _ensure_all_types(plans: list[ScanPlan], slices: int) -> None:
    """Short volumes drop labels; re-type a label of the partner type so all four types occur."""
    for first, second in (("TB", "TM"), ("FM", "FB")):
        for missing, present in ((first, second), (second, first)):
            placed = [(p, x) for p in plans for x in p.labels]
            candidates = [(p, x) for p, x in placed if x.type == present]
            if any(x.type == missing for _, x in placed) or len(candidates) < 2:
                continue
            for plan, label in candidates:
                reach = math.ceil(label.radius_mm / plan.anatomy.geometry.slice_mm + 0.5)
                if missing != "FB" or min(label.slice - label.z_first, label.z_last - label.slice) >= reach:
                    label.type = missing
                    break
    found = {x.type for p in plans for x in p.labels}
    if found != set(LABEL_TYPES):
        raise UserError(f"--slices {slices} leaves no room for all four label types (TB, TM, FB, FM) "
                        f"apart from each other; use more --slices or --scans")
