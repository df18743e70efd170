"""Is the detector right for the right reason? Saliency maps scored against the known tamper position.

Pure numpy. A map is (S, S) on the model's input; a tamper position is (x, y) = (column, row) in
the same pixels with a radius ``r`` (the tamper's half-size where the truth gives it, else CT-GAN's
32-pixel cube at 512² scaled to S). Scores (issue 13):

- pointing game: the map's peak lies within ``r`` of the centre (an all-zero map points nowhere: a miss);
- energy: the share of the map's positive mass within ``r`` of the centre;
- chance: the disc's pixel share of the image (a uniformly random peak, and the energy of a flat
  map), and the same scores with the truth positions shuffled among the scored slices;
- per FM (injected) and FB (removed);
- the randomisation sanity check (Adebayo et al., 2018): Spearman rank correlation between the
  trained detector's maps and those of the same architecture re-initialised.

Only tampered slices with a position are scored. Fakes without one (no x/y in the manifest, or a
±radius neighbour the phantom's truth says is untouched) and TB/TM/LIDC slices are counted, never
treated as misses.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medfake.core.contract import (
    LOCALISATION_SCORED,
    LOCALISATION_UNPOSITIONED,
    TAMPERED_TYPES,
    localisation_key,
    metric_key,
)

LABEL_SPACE = 512                 # CT-GAN's slices are 512²; its labels' x, y are in those pixels
DEFAULT_RADIUS_AT_512 = 16.0      # half of CT-GAN's 32-pixel in-plane cube (Mirsky et al., 2019)
SHUFFLE_REPEATS = 50


def to_input(value, extent: int, size: int):
    """A pixel coordinate of an ``extent``-pixel axis mapped to a ``size``-pixel one, centres aligned.

    The same geometry as the data's resize (``medfake.io.transforms.resize``): pixel ``i`` covers
    [i, i+1) and its centre i + 0.5 scales by size/extent.
    """
    return (np.asarray(value, np.float64) + 0.5) * (float(size) / float(extent)) - 0.5


def default_radius(size: int) -> float:
    """r where the truth gives no half-size: CT-GAN's cube half-size at 512², scaled to ``size``."""
    return DEFAULT_RADIUS_AT_512 * float(size) / LABEL_SPACE


@dataclass
class Truth:
    """Tamper positions of n slices on the model input; NaN x/y where a slice has none to score."""

    xy: np.ndarray          # (n, 2) float: x = column, y = row
    radius: np.ndarray      # (n,) float
    label_type: np.ndarray  # (n,) str
    fake: np.ndarray        # (n,) bool: labelled fake (tampered)

    @property
    def scored(self) -> np.ndarray:
        return self.fake & np.all(np.isfinite(self.xy), axis=1) & np.isfinite(self.radius)


def _numbers(rows: pd.DataFrame, column: str) -> np.ndarray:
    if column not in rows.columns:
        return np.full(len(rows), np.nan)
    return pd.to_numeric(rows[column], errors="coerce").to_numpy(np.float64)  # "" and text → NaN


def truth_from_manifest(rows: pd.DataFrame, size: int, data_size: int | None = None) -> Truth:
    """Positions of manifest rows (``x``, ``y``, ``radius`` in the stored data's pixels, empty where unknown).

    ``data_size`` is the stored slices' size when the model takes another (mapped like the resize).
    Rows the phantom's truth marks untampered (``truly_tampered`` "0") keep no position.
    """
    data_size = int(data_size or size)
    x, y, radius = (_numbers(rows, name) for name in ("x", "y", "radius"))
    radius = np.where(np.isfinite(radius), radius * size / data_size, default_radius(size))
    xy = np.stack([to_input(x, data_size, size), to_input(y, data_size, size)], axis=1)
    label_type = rows["label_type"].astype(str).to_numpy() if "label_type" in rows else np.full(len(rows), "")
    fake = rows["label"].to_numpy(np.int64) == 1 if "label" in rows else np.isin(label_type, list(TAMPERED_TYPES))
    if "truly_tampered" in rows:
        untouched = rows["truly_tampered"].astype(str).to_numpy() == "0"
        xy[untouched] = np.nan
    xy[~fake] = np.nan
    return Truth(xy=xy, radius=radius, label_type=label_type, fake=fake)


# -- per-slice scores --------------------------------------------------------------------------
def peaks(maps: np.ndarray) -> np.ndarray:
    """(n, 2) (x, y) of each map's maximum; NaN for a map with no positive value.

    Where several pixels share the maximum (an occlusion map is constant over each patch), the peak
    is their centroid, i.e. the patch's centre rather than its top-left corner.
    """
    maps = np.asarray(maps, np.float64)
    out = np.full((len(maps), 2), np.nan)
    for i, m in enumerate(maps):
        top = m.max() if m.size else np.nan
        if top > 0:
            rows, cols = np.nonzero(m >= top - 1e-9 * abs(top))
            out[i] = cols.mean(), rows.mean()
    return out


def _distance(shape: tuple[int, int], centre) -> np.ndarray:
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    return np.hypot(cols - centre[0], rows - centre[1])


def pointing_game(maps: np.ndarray, xy: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """(n,) bool: the peak within ``radius`` of ``xy`` (False for a map without a positive value)."""
    peak = peaks(maps)
    distance = np.hypot(peak[:, 0] - xy[:, 0], peak[:, 1] - xy[:, 1])
    return np.where(np.isfinite(distance), distance <= radius, False)


def disc_energy(maps: np.ndarray, xy: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """(n,) share of each map's positive mass within ``radius`` of ``xy`` (0 for an all-zero map)."""
    maps = np.maximum(np.asarray(maps, np.float64), 0.0)
    out = np.zeros(len(maps))
    for i, (m, centre, r) in enumerate(zip(maps, xy, radius)):
        total = m.sum()
        if total > 0:
            out[i] = m[_distance(m.shape, centre) <= r].sum() / total
    return out


def disc_share(xy: np.ndarray, radius: np.ndarray, size: int) -> np.ndarray:
    """(n,) the share of the size² image's pixels within ``radius`` of ``xy``: chance for both scores."""
    return np.array([(_distance((size, size), c) <= r).mean() for c, r in zip(xy, radius)])


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (so all-zero regions of a map tie)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (NaN when either is constant)."""
    ra, rb = _ranks(np.ravel(a).astype(np.float64)), _ranks(np.ravel(b).astype(np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


# -- aggregates ----------------------------------------------------------------------------------
@dataclass
class SliceScores:
    """Per-slice results of one method: NaN/None where a slice is not scored."""

    peak_xy: np.ndarray   # (n, 2)
    hit: np.ndarray       # (n,) float: 1, 0, or NaN (not scored)
    energy: np.ndarray    # (n,) float or NaN


def score_slices(maps: np.ndarray, truth: Truth) -> SliceScores:
    """Peak, pointing-game hit and disc energy of every slice; NaN where the slice has no position."""
    scored = truth.scored
    hit = np.full(len(maps), np.nan)
    energy = np.full(len(maps), np.nan)
    if scored.any():
        hit[scored] = pointing_game(maps[scored], truth.xy[scored], truth.radius[scored]).astype(float)
        energy[scored] = disc_energy(maps[scored], truth.xy[scored], truth.radius[scored])
    return SliceScores(peaks(maps), hit, energy)


def shuffled_chance(maps: np.ndarray, truth: Truth, seed: int = 0, repeats: int = SHUFFLE_REPEATS) -> tuple[float, float]:
    """Mean hit rate and energy with the scored slices' positions (and radii) permuted among them."""
    scored = np.flatnonzero(truth.scored)
    if len(scored) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    hits, energies = [], []
    for _ in range(repeats):
        order = scored[rng.permutation(len(scored))]
        hits.append(pointing_game(maps[scored], truth.xy[order], truth.radius[order]).mean())
        energies.append(disc_energy(maps[scored], truth.xy[order], truth.radius[order]).mean())
    return float(np.mean(hits)), float(np.mean(energies))


def randomisation_spearman(maps: np.ndarray, random_maps: np.ndarray) -> float:
    """Mean Spearman correlation between trained and re-initialised maps (constant pairs left out)."""
    values = [spearman(a, b) for a, b in zip(maps, random_maps)]
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def localisation_metrics(split: str, method: str, maps: np.ndarray, truth: Truth,
                         random_maps: np.ndarray | None = None, seed: int = 0) -> dict[str, float]:
    """The ``{split}_{method}_…`` metrics of one saliency method; hit rates only where slices are scored.

    ``random_maps`` are the re-initialised detector's maps of the same slices (any subset the
    caller chose, in the same order as ``maps``) for the randomisation check.
    """
    maps = np.asarray(maps)
    size = maps.shape[-1]
    scored = truth.scored
    out = {
        metric_key(split, LOCALISATION_SCORED): float(scored.sum()),
        metric_key(split, LOCALISATION_UNPOSITIONED): float((truth.fake & ~scored).sum()),
    }
    if random_maps is not None:
        value = randomisation_spearman(maps[: len(random_maps)], random_maps)
        if np.isfinite(value):
            out[localisation_key(split, method, "randomisation_spearman")] = value
    if not scored.any():
        return out
    per_slice = score_slices(maps, truth)
    shuffled_hit, shuffled_energy = shuffled_chance(maps, truth, seed)
    out |= {
        localisation_key(split, method, "hit_rate"): float(np.nanmean(per_slice.hit)),
        localisation_key(split, method, "energy"): float(np.nanmean(per_slice.energy)),
        localisation_key(split, method, "hit_rate_chance"): float(disc_share(truth.xy[scored], truth.radius[scored], size).mean()),
        localisation_key(split, method, "hit_rate_shuffled"): shuffled_hit,
        localisation_key(split, method, "energy_shuffled"): shuffled_energy,
    }
    for kind in ("FM", "FB"):
        of_kind = scored & (truth.label_type == kind)
        if of_kind.any():
            out[localisation_key(split, method, f"hit_rate_{kind.lower()}")] = float(per_slice.hit[of_kind].mean())
    return out


# -- maps of a Keras detector on dataset slices (the train step's hook, `medfake explain`) -------
MAX_RANDOMISATION_SLICES = 32   # the re-initialised maps are a check, not a second evaluation
OCCLUSION_RANDOMISATION_SLICES = 4
TRAIN_OCCLUSION_SLICES = 4      # the train step's samples: it must stay cheap (issue 13: ≤ 30 s on 2 cores)
TRAIN_RANDOMISATION_SLICES = 8
TRAIN_OCCLUSION_RANDOMISATION_SLICES = 2


@dataclass
class SplitMaps:
    """Maps and scores of the slices of one split that were explained (``index`` into the split's rows)."""

    index: np.ndarray
    scores: np.ndarray
    maps: dict[str, np.ndarray]          # method → (m, S, S)
    metrics: dict[str, float]


def occlusion_patch(radius: np.ndarray, size: int) -> int:
    """Occlusion's patch side (= its stride): the tamper's diameter (median of the scored slices' 2r),
    but at least S/8, so that a slice never costs more than 64 forward passes."""
    radius = np.asarray(radius, np.float64)
    radius = radius[np.isfinite(radius)]
    diameter = int(round(2.0 * float(np.median(radius)))) if len(radius) else 0
    return int(min(max(diameter, size // 8, 2), size))


def _sample(count: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted positions 0..count-1, or a seeded sample of ``limit`` of them (the same for the same seed)."""
    if limit is None or count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, int(limit), replace=False))


def explain_slices(model, images: np.ndarray, rows: pd.DataFrame, window: tuple[float, float], split: str,
                   methods: tuple[str, ...] = ("cam", "occlusion"), only_scored: bool = True, seed: int = 0,
                   batch_size: int = 16, data_size: int | None = None, occlusion_limit: int | None = None,
                   randomisation_limit: int = MAX_RANDOMISATION_SLICES,
                   occlusion_randomisation_limit: int = OCCLUSION_RANDOMISATION_SLICES) -> SplitMaps:
    """Grad-CAM/occlusion maps of a Keras detector on HU slices (n, S, S[, 1]) and their localisation metrics.

    With ``only_scored`` only slices with a tamper position are mapped (all a metric needs). Occlusion
    costs one forward pass per patch, so ``occlusion_limit`` maps a seeded sample of at most that many
    slices with it (its metrics are over that sample; ``maps["occlusion"]`` holds NaN elsewhere), with a
    patch the tamper's size (:func:`occlusion_patch`). The randomisation check maps at most
    ``randomisation_limit`` (occlusion: ``occlusion_randomisation_limit``) scored slices again with one
    re-initialised clone. Every forward pass, occlusion's too, goes through the detector's compiled
    Grad-CAM function (one trace per model; the gradient stops at the last convolutional block, so it
    costs little more than the forward pass) and the scores come from the same pass. The sample sizes
    are in the metrics (``{split}_{method}_mapped``, ``…_randomisation_slices``, ``…_occlusion_patch``).
    """
    from medfake.models import saliency

    size = int(model.input_shape[1])
    truth = truth_from_manifest(rows, size, data_size)
    index = np.flatnonzero(truth.scored) if only_scored else np.arange(len(rows))
    x = np.asarray(images, np.float32)[index]
    if x.ndim == 3:
        x = x[..., None]
    sub = Truth(truth.xy[index], truth.radius[index], truth.label_type[index], truth.fake[index])
    splits = {"trained": saliency.cam_model(model)}

    def split_of(which: str):
        if which not in splits:  # one clone with fresh weights, shared by both methods' checks
            splits[which] = saliency.cam_model(saliency.reinitialised(model))
        return splits[which]

    def predict_of(which: str):
        return lambda batch: saliency.grad_cam_scores(split_of(which), batch, 4 * batch_size)[1]

    fill = saliency.background_hu(window)
    patch = occlusion_patch(sub.radius[sub.scored], size)
    scores = None
    maps: dict[str, np.ndarray] = {}
    metrics: dict[str, float] = {}
    for method in methods:
        chosen = _sample(len(x), occlusion_limit if method == "occlusion" else None, seed)
        part = Truth(sub.xy[chosen], sub.radius[chosen], sub.label_type[chosen], sub.fake[chosen])
        limit = randomisation_limit if method == "cam" else occlusion_randomisation_limit
        check = np.flatnonzero(part.scored)[: max(int(limit), 0)]

        def make(which: str, batch: np.ndarray) -> np.ndarray:
            if not len(batch):
                return np.zeros((0, size, size), np.float32)
            if method == "cam":
                return saliency.grad_cam(split_of(which), batch, batch_size)
            return saliency.occlusion(predict_of(which), batch, fill, patch=patch, batch_size=4 * batch_size)

        if method == "cam":
            mapped, scores = saliency.grad_cam_scores(split_of("trained"), x, batch_size)
        else:
            mapped = make("trained", x[chosen])
        maps[method] = np.full((len(x), size, size), np.nan, np.float32)
        maps[method][chosen] = mapped
        metrics |= localisation_metrics(split, method, mapped, part, None, seed)
        metrics[localisation_key(split, method, "mapped")] = float(part.scored.sum())
        if method == "occlusion":
            metrics[localisation_key(split, method, "patch")] = float(patch)
        if len(check):
            metrics[localisation_key(split, method, "randomisation_slices")] = float(len(check))
            value = randomisation_spearman(mapped[check], make("random", x[chosen][check]))
            if np.isfinite(value):
                metrics[localisation_key(split, method, "randomisation_spearman")] = value
    if scores is None:
        scores = _predict(predict_of("trained"), x, 4 * batch_size)
    metrics[metric_key(split, LOCALISATION_SCORED)] = float(truth.scored.sum())  # the whole split's counts
    metrics[metric_key(split, LOCALISATION_UNPOSITIONED)] = float((truth.fake & ~truth.scored).sum())
    return SplitMaps(index=index, scores=scores, maps=maps, metrics=metrics)


def _predict(predict, x: np.ndarray, batch_size: int) -> np.ndarray:
    if not len(x):
        return np.zeros(0, np.float32)
    return np.concatenate([np.asarray(predict(x[i:i + batch_size]), np.float32).reshape(-1)
                           for i in range(0, len(x), batch_size)])


def log_localisation(model, dataset, cfg, split: str = "test") -> dict[str, float]:
    """The train step's hook (config ``eval.explain``): log the split's localisation metrics to the active run."""
    import mlflow

    rows = dataset.manifest[dataset.manifest["split"] == split]
    images = np.asarray(dataset.images[rows["row"].to_numpy()], np.float32)
    if "x" not in rows.columns:
        print(f"explain: dataset {dataset.digest} predates tamper positions (no x/y in its manifest): "
              f"localisation not scored; remove {dataset.path} and preprocess again", file=sys.stderr)
    result = explain_slices(model, images, rows.reset_index(drop=True),
                            (cfg.data.window.center, cfg.data.window.width), split, seed=cfg.seed,
                            batch_size=cfg.train.batch_size, data_size=images.shape[-1],
                            occlusion_limit=TRAIN_OCCLUSION_SLICES, randomisation_limit=TRAIN_RANDOMISATION_SLICES,
                            occlusion_randomisation_limit=TRAIN_OCCLUSION_RANDOMISATION_SLICES)
    mlflow.log_metrics({k: v for k, v in result.metrics.items() if np.isfinite(v)})
    return result.metrics
