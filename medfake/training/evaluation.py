"""Evaluate a scored split and log it: the numbers every step that scores slices reports.

One API for ``train``, ``evaluate`` and ``ensemble`` (DESIGN.md section 5, issue 12):

- :func:`evaluate_split` takes the dataset manifest rows of one split and the detector's scores
  (P(fake), one per row, same order) and returns a :class:`SplitEvaluation`: the metrics against
  the study's ±radius labels, against the phantom's truth (``truly_tampered``; absent on real data),
  the label noise, the FM/FB/TM/TB/LIDC breakdown, bootstrap CIs where asked, and the predictions
  table (``contract.PREDICTION_COLUMNS``).
- :meth:`SplitEvaluation.metrics` gives the MLflow keys; :func:`log_split` logs them with the
  ``predictions/{split}.csv`` file and the ROC / confusion / score plots.
- :func:`evaluate_and_log` runs both over the train/val/test splits of a dataset, as the train
  step does, with the latent-space figures when given an embedder.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medfake.core import contract
from medfake.core import plots as figures
from medfake.core.config import Config
from medfake.core.errors import UserError
from medfake.data.cache import Dataset
from medfake.training import embeddings as emb
from medfake.training import metrics as mt

ScoreFn = Callable[[np.ndarray], np.ndarray]  # int16 HU slices (n, S, S) → P(fake) (n,)
LABEL_METRICS = (*mt.METRICS, "loss")
TRUTH_ABSENT_NOTE = ("truth metrics: none — the data carry no true tamper extents (real data); "
                     "every metric is against the ±radius labels")


@dataclass(frozen=True)
class EvalSettings:
    """How a split is evaluated: the decision threshold and the bootstrap (``eval`` config)."""

    threshold: float = 0.5
    bootstrap_samples: int = 1000
    ci_level: float = 0.95
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: Config) -> "EvalSettings":
        return cls(cfg.eval.threshold, cfg.eval.bootstrap_samples, cfg.eval.ci_level, cfg.seed)


@dataclass
class SplitEvaluation:
    """Everything measured on one scored split (metric names without the ``{split}_`` prefix)."""

    split: str
    threshold: float                              # a slice is called fake when score ≥ threshold
    values: dict[str, float]                      # binary_metrics vs labels: METRICS, loss, ece, tp fp tn fn
    ci: dict[str, tuple[float, float]]            # METRICS → CI vs labels ({} without CIs)
    predictions: pd.DataFrame                     # contract.PREDICTION_COLUMNS, one row per slice
    true_values: dict[str, float] | None = None   # the same vs truly_tampered; None without truth
    true_ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    label_noise: float | None = None              # share of label-1 slices not truly tampered
    auc_ceiling: float | None = None              # AUC of the truth itself vs the ±radius labels
    breakdown: dict[str, float] = field(default_factory=dict)             # recall_fm … fpr_lidc
    breakdown_ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    true_breakdown: dict[str, float] = field(default_factory=dict)
    true_breakdown_ci: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def has_truth(self) -> bool:
        return self.true_values is not None

    def metrics(self) -> dict[str, float]:
        """The MLflow keys of this split: ``{split}_{metric}``, ``…_true``, CIs; NaNs left out."""
        s = self.split
        out = {contract.metric_key(s, k): self.values[k] for k in LABEL_METRICS}
        out |= {contract.metric_key(s, k): float(v) for k, v in self.breakdown.items()}
        out |= _ci_keys({contract.metric_key(s, k): ci for k, ci in (self.ci | self.breakdown_ci).items()})
        if self.ci:  # the full evaluation (test): calibration and the confusion counts too
            out[contract.metric_key(s, "ece")] = self.values["ece"]
            out |= {contract.metric_key(s, k): float(self.values[k]) for k in ("tp", "fp", "tn", "fn")}
        if self.true_values is not None:
            out |= {contract.true_key(s, k): self.true_values[k] for k in LABEL_METRICS}
            out |= {contract.true_key(s, k): float(v) for k, v in self.true_breakdown.items()}
            out |= _ci_keys({contract.true_key(s, k): ci for k, ci in (self.true_ci | self.true_breakdown_ci).items()})
        if self.label_noise is not None:
            out[contract.metric_key(s, contract.LABEL_NOISE)] = self.label_noise
        if self.auc_ceiling is not None:
            out[contract.metric_key(s, contract.AUC_CEILING)] = self.auc_ceiling
        return {k: float(v) for k, v in out.items() if np.isfinite(v)}


def _ci_keys(intervals: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    out = {}
    for key, (low, high) in intervals.items():
        low_key, high_key = contract.ci_keys(key)
        out[low_key], out[high_key] = low, high
    return out


# -- truth --------------------------------------------------------------------------------------
def truth_labels(rows: pd.DataFrame) -> np.ndarray | None:
    """0/1 truth per row from ``truly_tampered`` ("1"/"0"; empty where unknown), or None.

    The phantom's sidecar truth covers its CT-GAN-style scans; LIDC slices are never tampered, so
    an empty value there is 0. Truth is None (not partial) when any CT-GAN row lacks it: real data.
    """
    if "truly_tampered" not in rows.columns or rows.empty:
        return None
    text = rows["truly_tampered"].astype(str).str.strip().str.replace(r"\.0$", "", regex=True)
    known = text.isin(["0", "1"])
    lidc = rows["source"].astype(str) == contract.SOURCE_LIDC if "source" in rows.columns else False
    if not known.any() or not (known | lidc).all():
        return None
    return (text == "1").to_numpy(np.int64)


def auc_ceiling(labels: np.ndarray, truth: np.ndarray) -> float | None:
    """The AUC a perfect tamper finder reaches against the ±radius labels: scoring exactly the truth
    (1 on every truly tampered slice, 0 elsewhere); None without both labels. It ties every labelled
    slice the tamper never touched with the real ones, so it is 1 − noise/2 when no real-labelled slice
    is tampered (e.g. 0.884 for noise 0.232). It bounds a detector that scores only the tamper's trace,
    not every detector: one that also ranks untouched labelled slices above real ones passes it (a
    quickstart detector scored test AUC 0.945 against this ceiling's 0.914, reports/quickstart-training.md)."""
    from sklearn.metrics import roc_auc_score

    labels, truth = np.asarray(labels), np.asarray(truth, np.float64)
    return float(roc_auc_score(labels, truth)) if len(set(labels.tolist())) == 2 else None


def label_noise(labels: np.ndarray, truth: np.ndarray) -> float | None:
    """Share of the slices labelled fake (±radius rule) that are not truly tampered."""
    fakes = np.asarray(labels) == 1
    return float(np.mean(np.asarray(truth)[fakes] == 0)) if fakes.any() else None


# -- breakdowns -------------------------------------------------------------------------------
def _groups(rows: pd.DataFrame, y: np.ndarray) -> dict[str, np.ndarray]:
    """Breakdown name → boolean row mask, given the labels y (±radius labels or truth)."""
    kind = rows["label_type"].astype(str).str.upper().to_numpy()
    source = rows["source"].astype(str).to_numpy()
    groups = {name: (y == 1) & (kind == t) for name, t in contract.RECALL_BY_TYPE.items()}
    groups |= {name: (y == 0) & (kind == t) for name, t in contract.FPR_BY_TYPE.items()}
    groups[contract.FPR_LIDC] = (y == 0) & (source == contract.SOURCE_LIDC)
    return {name: mask for name, mask in groups.items() if mask.any()}


def breakdown(rows: pd.DataFrame, y: np.ndarray, scores: np.ndarray, settings: EvalSettings,
              with_ci: bool) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Recall per tamper type and false-positive rate per kind of real slice, with bootstrap CIs.

    The CI of a group is :func:`metrics.bootstrap_ci` on that group alone (one class): its recall
    for fakes, one minus its specificity for reals.
    """
    values, intervals = {}, {}
    for name, mask in _groups(rows, y).items():
        fake = name in contract.RECALL_BY_TYPE
        called = mt.predict_labels(scores[mask], settings.threshold)
        values[name] = float(called.mean())
        if not with_ci:
            continue
        ci = mt.bootstrap_ci(np.full(int(mask.sum()), int(fake)), scores[mask], settings.threshold,
                             settings.bootstrap_samples, settings.ci_level, seed=settings.seed)
        low, high = ci["recall"] if fake else tuple(1.0 - v for v in ci["specificity"][::-1])
        intervals[name] = (float(low), float(high))
    return values, intervals


# -- one split ----------------------------------------------------------------------------------
def predictions_frame(rows: pd.DataFrame, scores: np.ndarray, threshold: float) -> pd.DataFrame:
    """One row per slice with exactly ``contract.PREDICTION_COLUMNS`` (truth empty where unknown)."""
    missing = [c for c in contract.PREDICTION_COLUMNS[:5] if c not in rows.columns]
    if missing:
        raise ValueError(f"manifest rows lack column(s) {missing}")
    out = rows.loc[:, list(contract.PREDICTION_COLUMNS[:5])].reset_index(drop=True).copy()
    truth = rows["truly_tampered"] if "truly_tampered" in rows.columns else pd.Series([""] * len(rows))
    out["truly_tampered"] = truth.fillna("").astype(str).str.replace(r"\.0$", "", regex=True).to_numpy()
    out["score"] = np.asarray(scores, np.float64)
    out["predicted"] = mt.predict_labels(scores, threshold).astype(int)
    return out.loc[:, list(contract.PREDICTION_COLUMNS)]


def evaluate_split(split: str, rows: pd.DataFrame, scores, settings: EvalSettings = EvalSettings(),
                   with_ci: bool = True) -> SplitEvaluation:
    """All metrics of one scored split.

    ``rows``: the dataset manifest rows of the split (columns scan_id, source, slice, label,
    label_type, truly_tampered); ``scores``: P(fake) per row, same order. With ``with_ci`` every
    metric gets a bootstrap CI (``settings``). Truth metrics exist only where every CT-GAN row
    carries ``truly_tampered`` (the phantom).
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(rows) != scores.size:
        raise ValueError(f"{split}: {len(rows)} manifest rows but {scores.size} scores")
    if scores.size == 0:
        raise UserError(f"the {split} split holds no slices")
    y = rows["label"].to_numpy(np.int64)
    t = settings.threshold
    values = mt.binary_metrics(y, scores, t)

    def interval(labels):
        return mt.bootstrap_ci(labels, scores, t, settings.bootstrap_samples, settings.ci_level,
                               seed=settings.seed) if with_ci else {}

    result = SplitEvaluation(split, t, values, interval(y), predictions_frame(rows, scores, t))
    result.breakdown, result.breakdown_ci = breakdown(rows, y, scores, settings, with_ci)
    truth = truth_labels(rows)
    if truth is not None:
        result.true_values = mt.binary_metrics(truth, scores, t)
        result.true_ci = interval(truth)
        result.label_noise = label_noise(y, truth)
        result.auc_ceiling = auc_ceiling(y, truth)
        result.true_breakdown, result.true_breakdown_ci = breakdown(rows, truth, scores, settings, with_ci)
    return result


def log_split(evaluation: SplitEvaluation, artifacts: Path | None = None, *, title: str = "",
              plots: bool = True, predictions: bool = True) -> dict[str, float]:
    """Log a split's metrics to the active MLflow run; write its files under ``artifacts``.

    Files (logged by the caller with ``mlflow.log_artifacts(artifacts)``): ``predictions/{split}.csv``
    and, with ``plots``, ``plots/confusion_matrix.png``, ``roc.png``, ``score_histogram.png`` (the
    test split keeps those names; other splits are prefixed ``{split}_``). Returns the logged keys.
    """
    import mlflow

    logged = evaluation.metrics()
    mlflow.log_metrics(logged)
    if artifacts is None:
        return logged
    frame = evaluation.predictions
    if predictions:
        (artifacts / "predictions").mkdir(parents=True, exist_ok=True)
        # Nine significant digits: an undertrained detector's scores can all sit below 1e-6, and rounding
        # them to fixed decimals would tie them and change the AUC a report recomputes from this file.
        frame.to_csv(artifacts / "predictions" / f"{evaluation.split}.csv", index=False, float_format="%.9g")
    if plots:
        folder = artifacts / "plots"
        folder.mkdir(parents=True, exist_ok=True)
        prefix = "" if evaluation.split == "test" else f"{evaluation.split}_"
        v = evaluation.values
        y, scores = frame["label"].to_numpy(), frame["score"].to_numpy()
        figures.confusion_matrix_plot(v["tp"], v["fp"], v["tn"], v["fn"], folder / f"{prefix}confusion_matrix.png", title)
        figures.roc_plot({title or "detector": (y, scores)}, folder / f"{prefix}roc.png")
        figures.score_histogram(y, scores, folder / f"{prefix}score_histogram.png", evaluation.threshold)
    return logged


# -- a whole dataset (the train step) -----------------------------------------------------------
def split_rows(images, rows: np.ndarray) -> np.ndarray:
    """Rows of the (memory-mapped) image array as an int16 array, in the order asked."""
    if not len(rows):
        return images[:0]
    return np.asarray(images[np.sort(rows)])[np.argsort(np.argsort(rows))]


def evaluate_and_log(dataset: Dataset, score_fn: ScoreFn, settings: EvalSettings, artifacts: Path, *,
                     title: str, embed_fn: ScoreFn | None = None,
                     prediction_splits: tuple[str, ...] = ("val", "test")) -> dict[str, SplitEvaluation]:
    """Score and log every split of a dataset; CIs, plots and embeddings on the test split.

    Returns split → :class:`SplitEvaluation`. Without truth in the manifest (real data) the ``_true``
    metrics are absent and one line says so.
    """
    m = dataset.manifest
    results: dict[str, SplitEvaluation] = {}
    for split in contract.SPLITS:
        rows = m.index[m["split"] == split].to_numpy()
        if len(rows) == 0:
            continue
        scores = score_fn(split_rows(dataset.images, rows))
        test = split == "test"
        results[split] = evaluate_split(split, m.loc[rows], scores, settings, with_ci=test)
        log_split(results[split], artifacts, title=title, plots=test, predictions=split in prediction_splits)
    if "test" not in results:
        raise UserError("the dataset has no test slices; use more scans or other split_fractions")
    if not results["test"].has_truth:
        print(TRUTH_ABSENT_NOTE, file=sys.stderr)
    if embed_fn is not None:
        rows = m.index[m["split"] == "test"].to_numpy()
        log_embeddings(results["test"], embed_fn(split_rows(dataset.images, rows)), settings.seed, artifacts, title)
    return results


def log_embeddings(evaluation: SplitEvaluation, vectors: np.ndarray, seed: int, artifacts: Path, title: str) -> None:
    """The latent space of a split: vectors file, separability metrics, t-SNE and PCA maps."""
    import mlflow

    frame, split = evaluation.predictions, evaluation.split
    y, scores = frame["label"].to_numpy(np.int64), frame["score"].to_numpy()
    (artifacts / "embeddings").mkdir(parents=True, exist_ok=True)
    emb.save_embeddings(artifacts / "embeddings" / f"{split}.npz", vectors, y, scores, frame["scan_id"].to_numpy())
    sep = emb.separability(vectors, y, seed=seed)
    mlflow.log_metrics({contract.metric_key(split, k): float(v) for k, v in sep.items()
                        if isinstance(v, (int, float)) and np.isfinite(v)})
    (artifacts / "plots").mkdir(parents=True, exist_ok=True)
    for method in ("tsne", "pca"):
        points = emb.project_2d(vectors, method, seed=seed)
        figures.embedding_map(points, y, frame["predicted"].to_numpy(), artifacts / "plots" / f"embedding_{method}.png",
                            f"{title}: {method.upper()} of the 256-d embedding")


def summary_lines(evaluations: Mapping[str, SplitEvaluation], ci_level: float,
                  scans: Mapping[str, float] | None = None, split: str = "test") -> list[str]:
    """The terminal table of a split: metrics with CIs (val and truth beside), breakdown, scans."""
    ev = evaluations[split]
    val = evaluations["val"].values if "val" in evaluations and split != "val" else {}
    nan = (float("nan"), float("nan"))
    truth = "   true label" if ev.has_truth else ""
    lines = [f"{split} set ({len(ev.predictions)} slices), {int(round(ci_level * 100))}% bootstrap CI{truth}"]
    for name in mt.METRICS:
        low, high = ev.ci.get(name, nan)
        line = f"  {name:<12} {ev.values[name]:.4f}  [{low:.4f}, {high:.4f}]"
        line += f"   (val {val.get(name, float('nan')):.4f})" if val else ""
        lines.append(line + (f"   {ev.true_values[name]:.4f}" if ev.has_truth else ""))
    for name, value in ev.breakdown.items():
        low, high = ev.breakdown_ci.get(name, nan)
        lines.append(f"  {name:<12} {value:.4f}  [{low:.4f}, {high:.4f}]")
    if ev.label_noise is not None:
        lines.append(f"  label noise  {ev.label_noise:.4f} of the ±radius fakes are not truly tampered")
    if ev.auc_ceiling is not None:
        lines.append(f"  AUC ceiling  {ev.auc_ceiling:.4f} scoring exactly the truth against the ±radius labels "
                     "(a perfect tamper finder; only ranking untouched ±radius slices above real ones passes it)")
    if scans:
        lines.append("  whole scans  " + " · ".join(f"{k.removeprefix(split + '_')} {v:.4f}" for k, v in scans.items()))
    return lines
