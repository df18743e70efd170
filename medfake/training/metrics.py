"""Evaluation maths: the study's six metrics, the H screening score, calibration, CIs, tests.

Positive class = fake (tampered) = label 1; a score is the probability of *fake*, and a slice
is predicted fake when ``score >= threshold`` (:func:`predict_labels`, used everywhere).
Definitions follow Appendix B of the study (eqs. 5-9) and Table A1 (eq. 4, H). Bad arrays
are programming errors here, so they raise ``ValueError``, not ``UserError``.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

#: Metric names in the order used for tables, MLflow keys and bootstrap CIs (DESIGN §5).
METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auc", "h")
#: The study's per-model result vector for Pearson correlations (Figs. 5, 6; eq. 2).
STUDY_VECTOR = ("accuracy", "precision", "recall", "specificity", "f1", "auc")
#: Probabilities are clipped to [EPSILON, 1 - EPSILON] in the cross-entropy (as Keras does).
EPSILON = 1e-7
#: Discordant pairs below this use McNemar's exact binomial test (statsmodels' convention).
MCNEMAR_EXACT_BELOW = 25

_SPLIT_NAME = re.compile(r"^[a-z][a-z0-9]*$")


# --------------------------------------------------------------------------- validation


def _validated(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(labels as int8, scores as float64)`` or raise ValueError on a bad pair."""
    labels = np.asarray(y_true)
    scores = np.asarray(y_score, dtype=np.float64)
    if labels.ndim != 1 or scores.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {labels.shape} and {scores.shape}")
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length: {labels.size} vs {scores.size}")
    if labels.size == 0:
        raise ValueError("labels and scores are empty")
    return _binary_labels(labels, "labels"), _probabilities(scores)


def _binary_labels(values, what: str) -> np.ndarray:
    """0/1 labels (bool, int or float holding exactly 0 and 1) as int8."""
    array = np.asarray(values)
    if array.dtype == bool:
        return array.astype(np.int8)
    if not np.issubdtype(array.dtype, np.number) or not np.isin(array, (0, 1)).all():
        raise ValueError(f"{what} must be binary 0/1 (1 = fake), got values {np.unique(array)[:5]}")
    return array.astype(np.int8)


def _probabilities(scores: np.ndarray) -> np.ndarray:
    if not np.isfinite(scores).all() or scores.min() < 0.0 or scores.max() > 1.0:
        raise ValueError(
            f"scores must be probabilities in [0, 1], got range [{np.nanmin(scores)}, {np.nanmax(scores)}]"
        )
    return scores


def predict_labels(y_score, threshold: float = 0.5) -> np.ndarray:
    """Predicted labels: 1 (fake) where ``score >= threshold`` (sklearn's ROC convention)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    return (np.asarray(y_score, dtype=np.float64) >= threshold).astype(np.int8)


# --------------------------------------------------------------------------- scalar metrics


def harmonic_mean(values: Iterable[float]) -> float:
    """Harmonic mean (study eq. 3); 0 when any value is 0, NaN when any is NaN."""
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        raise ValueError("harmonic_mean needs at least one value")
    if np.isnan(array).any():
        return math.nan
    if (array < 0).any():
        raise ValueError(f"harmonic_mean is defined for non-negative values, got {array.tolist()}")
    if (array == 0).any():
        return 0.0
    return float(array.size / np.sum(1.0 / array))


def h_score(accuracy: float, f1: float, specificity: float) -> float:
    """The study's screening score H: harmonic mean of accuracy, F1 and specificity (eq. 4)."""
    return harmonic_mean((accuracy, f1, specificity))


def expected_calibration_error(y_true, y_score, n_bins: int = 10) -> float:
    """ECE of the fake-probability: sum over equal-width bins of |fraction fake - mean score|,
    weighted by the bin's share of samples (reliability diagram of the positive class)."""
    labels, scores = _validated(y_true, y_score)
    bins = np.minimum((scores * n_bins).astype(np.int64), n_bins - 1)
    fake_per_bin = np.bincount(bins, weights=labels, minlength=n_bins)
    score_per_bin = np.bincount(bins, weights=scores, minlength=n_bins)
    return float(np.abs(fake_per_bin - score_per_bin).sum() / labels.size)


def binary_cross_entropy(y_true, y_score) -> float:
    """Mean binary cross-entropy (study eq. 1) with scores clipped to [1e-7, 1 - 1e-7]."""
    labels, scores = _validated(y_true, y_score)
    clipped = np.clip(scores, EPSILON, 1.0 - EPSILON)
    return float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log1p(-clipped)))


def binary_metrics(y_true, y_score, threshold: float = 0.5) -> dict[str, float]:
    """All evaluation numbers of one split (Appendix B), keyed by METRICS plus extras.

    Keys: ``METRICS`` + ``loss`` (clipped cross-entropy) + ``ece`` (10 bins) + ``tp fp tn fn``.
    Undefined ratios are 0 (scikit-learn's ``zero_division=0``); ``auc`` is NaN when the
    split holds only one class, because the ROC curve does not exist then.
    """
    from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

    labels, scores = _validated(y_true, y_score)
    predicted = predict_labels(scores, threshold)
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    accuracy = (tp + tn) / labels.size
    specificity = tn / (tn + fp) if tn + fp else 0.0
    f1 = f1_score(labels, predicted, labels=[0, 1], zero_division=0)
    both_classes = 0 < labels.sum() < labels.size
    values = {
        "accuracy": accuracy,
        "precision": precision_score(labels, predicted, labels=[0, 1], zero_division=0),
        "recall": recall_score(labels, predicted, labels=[0, 1], zero_division=0),
        "specificity": specificity,
        "f1": f1,
        "auc": roc_auc_score(labels, scores) if both_classes else math.nan,
        "h": h_score(accuracy, f1, specificity),
        "loss": binary_cross_entropy(labels, scores),
        "ece": expected_calibration_error(labels, scores),
    }
    result = {name: float(value) for name, value in values.items()}
    result.update(tp=int(tp), fp=int(fp), tn=int(tn), fn=int(fn))
    return result


# --------------------------------------------------------------------------- vectorised metrics


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator with 0 where the denominator is 0 (zero_division=0)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast_shapes(numerator.shape, denominator.shape))
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def rank_auc(y_true, y_score, axis: int = -1) -> np.ndarray:
    """ROC AUC along ``axis`` from average ranks (Mann-Whitney U / (n1 n0)); NaN if one class.

    Equals ``sklearn.metrics.roc_auc_score`` (ties count one half) but works on a whole
    batch of resamples at once.
    """
    from scipy.stats import rankdata

    labels = np.moveaxis(np.asarray(y_true, dtype=np.float64), axis, -1)
    scores = np.moveaxis(np.asarray(y_score, dtype=np.float64), axis, -1)
    ranks = rankdata(scores, method="average", axis=-1)
    n_fake = labels.sum(axis=-1)
    n_real = labels.shape[-1] - n_fake
    u_statistic = (ranks * labels).sum(axis=-1) - n_fake * (n_fake + 1) / 2
    pairs = n_fake * n_real
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, u_statistic / pairs, np.nan)


def metrics_from_indices(y_true, y_score, indices, threshold: float = 0.5) -> np.ndarray:
    """METRICS (first axis, in order) of the samples picked by ``indices`` along its last axis.

    ``indices`` may have any leading shape (e.g. ``(n_resamples, n)``); the result has shape
    ``(len(METRICS), *leading)``. Used by :func:`bootstrap_ci`; equal to :func:`binary_metrics`.
    """
    labels, scores = _validated(y_true, y_score)
    index = np.asarray(indices, dtype=np.intp)
    truth = labels[index].astype(bool)
    predicted = predict_labels(scores, threshold)[index].astype(bool)
    tp = np.sum(truth & predicted, axis=-1)
    fp = np.sum(~truth & predicted, axis=-1)
    tn = np.sum(~truth & ~predicted, axis=-1)
    fn = np.sum(truth & ~predicted, axis=-1)
    accuracy = (tp + tn) / index.shape[-1]
    specificity = _safe_ratio(tn, tn + fp)
    f1 = _safe_ratio(2 * tp, 2 * tp + fp + fn)
    with np.errstate(divide="ignore"):
        inverse_sum = 1.0 / accuracy + 1.0 / f1 + 1.0 / specificity
    h = np.where(np.isfinite(inverse_sum), 3.0 / inverse_sum, 0.0)
    columns = {
        "accuracy": accuracy,
        "precision": _safe_ratio(tp, tp + fp),
        "recall": _safe_ratio(tp, tp + fn),
        "specificity": specificity,
        "f1": f1,
        "auc": rank_auc(truth, scores[index]),
        "h": h,
    }
    return np.stack([np.broadcast_to(columns[name], tp.shape).astype(np.float64) for name in METRICS])


def bootstrap_ci(
    y_true,
    y_score,
    threshold: float = 0.5,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    method: str = "percentile",
) -> dict[str, tuple[float, float]]:
    """Bootstrap confidence interval of every metric in METRICS (fixes the study's CI-less
    three-run means, DESIGN §2).

    Resampling is stratified by class (fakes and reals are resampled separately through
    ``scipy.stats.bootstrap``'s independent samples), so every resample holds both classes
    and keeps the split's class balance. ``method`` is ``"percentile"`` or ``"BCa"`` (BCa
    falls back to the percentile interval where its correction is undefined, e.g. a metric
    that is 1.0 in every resample). A metric that is NaN on the data (AUC with one class)
    gets ``(nan, nan)``.
    """
    from scipy.stats import bootstrap

    labels, scores = _validated(y_true, y_score)
    if n_resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"need n_resamples >= 1 and 0 < level < 1, got {n_resamples}, {level}")
    strata = [np.flatnonzero(labels == value) for value in (1, 0)]
    # A class of one slice resamples to itself: it joins every resample unchanged (scipy's
    # bootstrap refuses one-observation samples).
    fixed = np.concatenate([stratum for stratum in strata if stratum.size == 1] or [np.zeros(0, np.intp)])
    strata = [stratum for stratum in strata if stratum.size > 1]
    if not strata:
        value = metrics_from_indices(labels, scores, np.arange(labels.size), threshold)
        return {name: (math.nan, math.nan) if np.isnan(v) else (float(v), float(v)) for name, v in zip(METRICS, value)}

    def statistic(*samples, axis=-1):
        leading = np.broadcast_shapes(*(sample.shape[:-1] for sample in samples))
        parts = [np.broadcast_to(sample, (*leading, sample.shape[-1])) for sample in samples]
        parts.append(np.broadcast_to(fixed, (*leading, fixed.size)))
        return metrics_from_indices(labels, scores, np.concatenate(parts, axis=-1), threshold)

    point = statistic(*strata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate/NaN distributions are handled below
        result = bootstrap(
            strata,
            statistic,
            n_resamples=n_resamples,
            batch=max(1, min(n_resamples, 4_000_000 // labels.size)),
            vectorized=True,
            confidence_level=level,
            method=method,
            rng=np.random.default_rng(seed),
        )
        low, high = _where_undefined_percentile(result.confidence_interval.low, result.confidence_interval.high,
                                                result.bootstrap_distribution, level)
    intervals = {}
    for row, name in enumerate(METRICS):
        if np.isnan(point[row]):
            intervals[name] = (math.nan, math.nan)
        else:
            intervals[name] = (float(low[row]), float(high[row]))
    return intervals


def _where_undefined_percentile(low, high, distribution, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Each metric's (low, high), replaced by the percentile interval of its bootstrap distribution
    (NaN resamples ignored) where either bound is NaN: BCa's correction is undefined there."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an all-NaN row stays NaN
        percentile = np.nanquantile(distribution, [(1 - level) / 2, (1 + level) / 2], axis=-1)
    undefined = np.isnan(low) | np.isnan(high)
    return np.where(undefined, percentile[0], low), np.where(undefined, percentile[1], high)


# --------------------------------------------------------------------------- MLflow keys


def _check_split(split: str) -> None:
    if not _SPLIT_NAME.match(split):
        raise ValueError(f"split must be a lower-case word such as 'test', got {split!r}")


def mlflow_metrics(split: str, metrics: Mapping[str, float]) -> dict[str, float]:
    """Contract keys ``{split}_{metric}`` (DESIGN §5), e.g. ``test_auc``, as floats."""
    _check_split(split)
    return {f"{split}_{name}": float(value) for name, value in metrics.items()}


def ci_metrics(split: str, ci: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """Keys ``{split}_{metric}_ci_low`` / ``_ci_high`` for the output of :func:`bootstrap_ci`."""
    _check_split(split)
    keys = {}
    for name, (low, high) in ci.items():
        keys[f"{split}_{name}_ci_low"] = float(low)
        keys[f"{split}_{name}_ci_high"] = float(high)
    return keys


# --------------------------------------------------------------------------- comparisons


def model_correlation(table, columns: Sequence[str] = STUDY_VECTOR):
    """Pearson correlation between models (rows of ``table``) over their metric vectors
    ``[acc, prec, rec, spec, F1, AUC]`` — the study's Figs. 5 and 6 (eq. 2)."""
    import pandas as pd

    frame = pd.DataFrame(table)
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise ValueError(f"metric table lacks columns {missing}")
    return frame.loc[:, list(columns)].astype(float).T.corr(method="pearson")


def mcnemar(y_true, pred_a, pred_b) -> tuple[float, float]:
    """McNemar's test of two classifiers on the same samples: ``(statistic, p_value)``.

    b = A right and B wrong, c = A wrong and B right. With fewer than 25 discordant pairs
    the exact two-sided binomial test is used (statistic = min(b, c)); otherwise the
    chi-square statistic with continuity correction (|b - c| - 1)² / (b + c), 1 d.o.f.
    """
    from scipy.stats import binomtest, chi2

    labels = _binary_labels(y_true, "labels")
    predicted_a = _binary_labels(pred_a, "pred_a")
    predicted_b = _binary_labels(pred_b, "pred_b")
    if not labels.shape == predicted_a.shape == predicted_b.shape or labels.ndim != 1:
        raise ValueError(f"shapes differ: {labels.shape}, {predicted_a.shape}, {predicted_b.shape}")
    correct_a = predicted_a == labels
    correct_b = predicted_b == labels
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    discordant = only_a + only_b
    if discordant == 0:
        return 0.0, 1.0
    if discordant < MCNEMAR_EXACT_BELOW:
        test = binomtest(min(only_a, only_b), discordant, 0.5, alternative="two-sided")
        return float(min(only_a, only_b)), float(test.pvalue)
    statistic = (abs(only_a - only_b) - 1) ** 2 / discordant
    return float(statistic), float(chi2.sf(statistic, df=1))


def delong_auc_test(y_true, score_a, score_b) -> tuple[float, float, float, float]:
    """DeLong's test of two correlated ROC AUCs: ``(auc_a, auc_b, z, p_value)`` (two-sided).

    Fast midrank algorithm of Sun & Xu (IEEE SPL 2014): structural components from ranks
    within the positives, the negatives and both; identical scores give z = 0, p = 1.
    """
    from scipy.stats import norm, rankdata

    labels, first = _validated(y_true, score_a)
    _, second = _validated(y_true, score_b)
    fake = labels == 1
    n_fake, n_real = int(fake.sum()), int((~fake).sum())
    if n_fake < 2 or n_real < 2:
        raise ValueError(f"DeLong's test needs two samples of each class, got {n_fake} fake, {n_real} real")
    scores = np.stack([first, second])  # (models, samples)
    positives, negatives = scores[:, fake], scores[:, ~fake]
    rank_positives = rankdata(positives, axis=1)
    rank_negatives = rankdata(negatives, axis=1)
    rank_all = rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    aucs = (rank_all[:, :n_fake].sum(axis=1) - n_fake * (n_fake + 1) / 2) / (n_fake * n_real)
    components_positive = (rank_all[:, :n_fake] - rank_positives) / n_real
    components_negative = 1.0 - (rank_all[:, n_fake:] - rank_negatives) / n_fake
    covariance = np.atleast_2d(np.cov(components_positive)) / n_fake + np.atleast_2d(
        np.cov(components_negative)
    ) / n_real
    difference = aucs[0] - aucs[1]
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    if variance <= 1e-15:
        z = 0.0 if abs(difference) < 1e-12 else math.copysign(math.inf, difference)
    else:
        z = difference / math.sqrt(variance)
    p_value = float(2 * norm.sf(abs(z)))
    return float(aucs[0]), float(aucs[1]), float(z), p_value
