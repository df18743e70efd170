"""Metrics against scikit-learn, the study's Table A1, and the CI / significance tests."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from medfake.training import metrics

# Study Table 1 (accuracy, F1, specificity) and Table A1 (H), one run per model.
TABLE_1_AND_A1 = {
    "ConvNeXtTiny": (0.9544, 0.9524, 0.9490, 0.9519),
    "DenseNet121": (0.9678, 0.9671, 0.9439, 0.9595),
    "DenseNet169": (0.9786, 0.9777, 0.9694, 0.9752),
    "DenseNet201": (0.9571, 0.9553, 0.9490, 0.9538),
    "EfficientNetB4": (0.9678, 0.9661, 0.9694, 0.9678),
    "EfficientNetV2S": (0.9678, 0.9663, 0.9643, 0.9661),
    "InceptionV3": (0.9517, 0.9500, 0.9388, 0.9468),
    "MobileNetV3Large": (0.9598, 0.9583, 0.9490, 0.9557),
    "RegNetX040": (0.9491, 0.9456, 0.9643, 0.9529),
    "RegNetY040": (0.9544, 0.9529, 0.9388, 0.9486),
    "ResNet50V2": (0.9732, 0.9713, 0.9898, 0.9780),
    "VGG19": (0.9517, 0.9492, 0.9541, 0.9517),
    "Xception": (0.9651, 0.9632, 0.9694, 0.9659),
}


def synthetic_scores(n: int, seed: int = 0, separation: float = 0.35, ties: bool = False):
    """Labels and overlapping fake-probabilities of a decent but imperfect detector."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = np.clip(rng.normal(0.5 + separation * (labels - 0.5), 0.22), 0.0, 1.0)
    if ties:
        scores = np.round(scores, 1)
    return labels, scores


@pytest.mark.parametrize("threshold", [0.5, 0.3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_metrics_equal_scikit_learn(threshold, seed):
    labels, scores = synthetic_scores(300, seed=seed)
    predicted = (scores >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, predicted).ravel()
    result = metrics.binary_metrics(labels, scores, threshold=threshold)
    expected = {
        "accuracy": accuracy_score(labels, predicted),
        "precision": precision_score(labels, predicted),
        "recall": recall_score(labels, predicted),
        "specificity": tn / (tn + fp),
        "f1": f1_score(labels, predicted),
        "auc": roc_auc_score(labels, scores),
        "loss": log_loss(labels, np.clip(scores, 1e-7, 1 - 1e-7)),
    }
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-9), name
    assert (result["tp"], result["fp"], result["tn"], result["fn"]) == (tp, fp, tn, fn)
    h = 3 / (1 / expected["accuracy"] + 1 / expected["f1"] + 1 / expected["specificity"])
    assert result["h"] == pytest.approx(h)
    assert set(metrics.METRICS) | {"loss", "ece", "tp", "fp", "tn", "fn"} == set(result)


def test_threshold_is_inclusive_and_changes_predictions():
    labels = np.array([0, 1, 1, 0])
    scores = np.array([0.2, 0.5, 0.9, 0.5])
    assert metrics.predict_labels(scores, 0.5).tolist() == [0, 1, 1, 1]
    at_half = metrics.binary_metrics(labels, scores, 0.5)
    above_half = metrics.binary_metrics(labels, scores, 0.6)
    assert at_half["fp"] == 1 and above_half["fp"] == 0 and above_half["fn"] == 1


def test_zero_division_gives_zero_and_single_class_auc_is_nan():
    labels = np.zeros(5, dtype=int)
    result = metrics.binary_metrics(labels, np.full(5, 0.1))
    assert result["precision"] == 0.0 and result["recall"] == 0.0 and result["f1"] == 0.0
    assert result["specificity"] == 1.0 and result["h"] == 0.0
    assert math.isnan(result["auc"])


@pytest.mark.parametrize(
    ("labels", "scores"),
    [
        ([0, 1, 1], [0.1, 0.9]),  # lengths differ
        ([0, 2, 1], [0.1, 0.9, 0.4]),  # non-binary labels
        ([0, 1, 1], [0.1, 1.2, 0.4]),  # score above 1
        ([0, 1, 1], [0.1, -0.01, 0.4]),  # score below 0
        ([0, 1, 1], [0.1, np.nan, 0.4]),  # NaN score
        ([], []),  # empty
    ],
)
def test_invalid_inputs_raise_value_error(labels, scores):
    with pytest.raises(ValueError):
        metrics.binary_metrics(labels, scores)


@pytest.mark.parametrize("model", sorted(TABLE_1_AND_A1))
def test_h_score_reproduces_table_a1(model):
    accuracy, f1, specificity, h_in_paper = TABLE_1_AND_A1[model]
    assert metrics.h_score(accuracy, f1, specificity) == pytest.approx(h_in_paper, abs=1e-4)


def test_h_score_ranking_picks_the_papers_top_six():
    ranked = sorted(TABLE_1_AND_A1, key=lambda name: -metrics.h_score(*TABLE_1_AND_A1[name][:3]))
    # Table A1 bolds these six; EfficientNetV2S (0.9661) and Xception (0.9659) are close.
    assert set(ranked[:6]) == {
        "ResNet50V2", "DenseNet169", "EfficientNetB4", "EfficientNetV2S", "Xception", "DenseNet121",
    }


def test_harmonic_mean_edge_cases():
    assert metrics.harmonic_mean([0.5, 0.0, 1.0]) == 0.0
    assert metrics.harmonic_mean([2.0, 2.0]) == pytest.approx(2.0)
    assert metrics.harmonic_mean([1.0, 3.0]) == pytest.approx(1.5)
    assert math.isnan(metrics.harmonic_mean([1.0, math.nan]))
    with pytest.raises(ValueError):
        metrics.harmonic_mean([])


def test_ece_small_when_calibrated_and_large_when_over_confident():
    rng = np.random.default_rng(3)
    probability = rng.uniform(0, 1, 20000)
    labels = (rng.uniform(0, 1, probability.size) < probability).astype(int)
    calibrated = metrics.expected_calibration_error(labels, probability)
    over_confident = metrics.expected_calibration_error(labels, np.clip(0.5 + 4 * (probability - 0.5), 0, 1))
    assert calibrated < 0.02
    assert over_confident > 0.15
    assert metrics.binary_metrics(labels, probability)["ece"] == pytest.approx(calibrated)


@pytest.mark.parametrize("ties", [False, True])
def test_rank_auc_equals_scikit_learn_on_batches(ties):
    labels, scores = synthetic_scores(200, seed=5, ties=ties)
    rng = np.random.default_rng(6)
    indices = rng.integers(0, labels.size, (20, labels.size))
    batch = metrics.rank_auc(labels[indices], scores[indices])
    expected = [roc_auc_score(labels[row], scores[row]) for row in indices]
    np.testing.assert_allclose(batch, expected, atol=1e-12)


def test_metrics_from_indices_equal_binary_metrics():
    labels, scores = synthetic_scores(150, seed=8, ties=True)
    rng = np.random.default_rng(9)
    indices = rng.integers(0, labels.size, (10, labels.size))
    batch = metrics.metrics_from_indices(labels, scores, indices, threshold=0.4)
    assert batch.shape == (len(metrics.METRICS), 10)
    for column, row in enumerate(indices):
        single = metrics.binary_metrics(labels[row], scores[row], threshold=0.4)
        np.testing.assert_allclose(batch[:, column], [single[name] for name in metrics.METRICS], atol=1e-12)


def test_bootstrap_ci_contains_point_estimate_and_narrows_with_n():
    small = synthetic_scores(120, seed=11)
    large = synthetic_scores(1200, seed=11)
    ci_small = metrics.bootstrap_ci(*small, n_resamples=400)
    ci_large = metrics.bootstrap_ci(*large, n_resamples=400)
    point = metrics.binary_metrics(*small)
    assert tuple(ci_small) == metrics.METRICS
    for name in metrics.METRICS:
        low, high = ci_small[name]
        assert low <= point[name] <= high, name
        assert ci_large[name][1] - ci_large[name][0] < high - low, name


def test_bootstrap_ci_is_deterministic_with_seed():
    labels, scores = synthetic_scores(200, seed=12)
    first = metrics.bootstrap_ci(labels, scores, n_resamples=200, seed=4)
    assert first == metrics.bootstrap_ci(labels, scores, n_resamples=200, seed=4)
    assert first != metrics.bootstrap_ci(labels, scores, n_resamples=200, seed=5)


def test_bootstrap_ci_bca_and_degenerate_metrics():
    labels, scores = synthetic_scores(200, seed=13)
    bca = metrics.bootstrap_ci(labels, scores, n_resamples=300, method="BCa")
    assert all(low <= high for low, high in bca.values())
    perfect = metrics.bootstrap_ci(labels, labels * 0.8 + 0.1, n_resamples=100, method="BCa")
    assert perfect["accuracy"] == (1.0, 1.0) and perfect["auc"] == (1.0, 1.0)


def test_bootstrap_ci_with_one_class_does_not_crash():
    ci = metrics.bootstrap_ci(np.ones(30, dtype=int), np.linspace(0.2, 0.9, 30), n_resamples=100)
    assert all(math.isnan(value) for value in ci["auc"])
    assert 0.0 <= ci["recall"][0] <= ci["recall"][1] <= 1.0


def test_bootstrap_ci_is_fast():
    labels, scores = synthetic_scores(400, seed=14)
    metrics.bootstrap_ci(labels, scores, n_resamples=50)  # warm imports
    start = time.perf_counter()
    metrics.bootstrap_ci(labels, scores, n_resamples=1000)
    assert time.perf_counter() - start < 5.0


def test_mlflow_and_ci_keys_follow_the_contract():
    result = metrics.binary_metrics(*synthetic_scores(50, seed=15))
    keys = metrics.mlflow_metrics("test", result)
    assert {f"test_{name}" for name in (*metrics.METRICS, "loss")} <= set(keys)
    assert all(isinstance(value, float) for value in keys.values())
    ci_keys = metrics.ci_metrics("val", {"auc": (0.9, 0.95)})
    assert ci_keys == {"val_auc_ci_low": 0.9, "val_auc_ci_high": 0.95}
    with pytest.raises(ValueError):
        metrics.mlflow_metrics("Test set", result)


def test_model_correlation_is_pearson_between_models():
    table = pd.DataFrame(
        {name: [0.97, 0.95, 0.99, 0.96, 0.97, 0.998] for name in ("a",)}, index=metrics.STUDY_VECTOR
    ).T
    table.loc["b"] = [0.96, 0.99, 0.93, 0.99, 0.96, 0.997]
    table.loc["c"] = table.loc["a"] * 2 - 0.5  # a linear function of a: r = 1
    correlation = metrics.model_correlation(table)
    assert correlation.loc["a", "c"] == pytest.approx(1.0)
    assert correlation.loc["a", "b"] == pytest.approx(np.corrcoef(table.loc["a"], table.loc["b"])[0, 1])
    with pytest.raises(ValueError):
        metrics.model_correlation(table.drop(columns="auc"))


def test_mcnemar_exact_and_chi_square_branches():
    labels = np.ones(100, dtype=int)
    same = np.ones(100, dtype=int)
    assert metrics.mcnemar(labels, same, same) == (0.0, 1.0)
    # Exact branch: A right where B is wrong on 10 slices, the reverse on 0.
    pred_b = same.copy()
    pred_b[:10] = 0
    statistic, p_value = metrics.mcnemar(labels, same, pred_b)
    assert statistic == 0.0 and p_value == pytest.approx(2 * 0.5**10)
    # Chi-square branch: b = 40, c = 10 -> (|40 - 10| - 1)^2 / 50.
    pred_a = same.copy()
    pred_a[40:50] = 0
    pred_b = same.copy()
    pred_b[:40] = 0
    statistic, p_value = metrics.mcnemar(labels, pred_a, pred_b)
    assert statistic == pytest.approx(29**2 / 50) and p_value < 0.001
    balanced_b = same.copy()
    balanced_b[:20] = 0
    balanced_a = same.copy()
    balanced_a[20:40] = 0
    assert metrics.mcnemar(labels, balanced_a, balanced_b)[1] > 0.5


def test_delong_matches_scikit_learn_and_detects_differences():
    labels, good = synthetic_scores(400, seed=16, separation=0.5)
    rng = np.random.default_rng(17)
    auc_a, auc_b, z, p_value = metrics.delong_auc_test(labels, good, good)
    assert auc_a == auc_b == pytest.approx(roc_auc_score(labels, good))
    assert z == 0.0 and p_value == 1.0
    weak = np.clip(0.5 * good + 0.5 * rng.uniform(0, 1, good.size), 0, 1)
    auc_a, auc_b, z, p_value = metrics.delong_auc_test(labels, good, weak)
    assert auc_b == pytest.approx(roc_auc_score(labels, weak))
    assert auc_a > auc_b and z > 3 and p_value < 1e-3
    noisy = np.clip(good + rng.normal(0, 0.01, good.size), 0, 1)
    assert metrics.delong_auc_test(labels, good, noisy)[3] > 0.05


def test_delong_variance_matches_a_direct_computation():
    """Check the fast midrank algorithm against DeLong's O(n1·n0) placement values."""
    labels, first = synthetic_scores(60, seed=18, ties=True)
    _, second = synthetic_scores(60, seed=19, ties=True)
    positives, negatives = labels == 1, labels == 0

    def placements(scores):
        comparison = (scores[positives][:, None] > scores[negatives][None, :]) + 0.5 * (
            scores[positives][:, None] == scores[negatives][None, :]
        )
        return comparison.mean(axis=1), comparison.mean(axis=0)

    (v10_a, v01_a), (v10_b, v01_b) = placements(first), placements(second)
    covariance = np.cov([v10_a, v10_b]) / positives.sum() + np.cov([v01_a, v01_b]) / negatives.sum()
    z = (v10_a.mean() - v10_b.mean()) / math.sqrt(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1])
    assert metrics.delong_auc_test(labels, first, second)[2] == pytest.approx(z, rel=1e-9)


def test_bootstrap_ci_with_a_one_slice_class():
    from medfake.training.metrics import bootstrap_ci

    y = np.array([1, 0, 0, 0, 0, 0])
    scores = np.array([0.9, 0.1, 0.6, 0.2, 0.3, 0.4])
    ci = bootstrap_ci(y, scores, n_resamples=100, seed=0)
    assert ci["recall"] == (1.0, 1.0)  # the one fake is always in the resample, always found
    assert ci["specificity"][0] <= 0.8 <= ci["specificity"][1]
    single = bootstrap_ci(np.array([1]), np.array([0.7]), n_resamples=10)
    assert single["recall"] == (1.0, 1.0) and np.isnan(single["auc"][0])


def _scipy_bootstrap(labels, scores, threshold, n_resamples, level, seed, method):
    """The CI rule written out against scipy directly: fakes and reals resampled as two independent
    samples (fakes first), one batch, the given seed; scipy's NaN bounds replaced by the
    NaN-ignoring percentile interval of the same bootstrap distribution."""
    from scipy.stats import bootstrap

    strata = [np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)]

    def statistic(fakes, reals, axis=-1):
        leading = np.broadcast_shapes(fakes.shape[:-1], reals.shape[:-1])
        both = [np.broadcast_to(part, (*leading, part.shape[-1])) for part in (fakes, reals)]
        return metrics.metrics_from_indices(labels, scores, np.concatenate(both, axis=-1), threshold)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = bootstrap(strata, statistic, n_resamples=n_resamples, vectorized=True, confidence_level=level,
                           method=method, rng=np.random.default_rng(seed))
    alpha = (1 - level) / 2
    fallback = np.nanquantile(result.bootstrap_distribution, [alpha, 1 - alpha], axis=-1)
    low, high = result.confidence_interval
    raw = {name: (low[row], high[row]) for row, name in enumerate(metrics.METRICS)}
    fixed = {name: (fallback[0, row] if np.isnan(low[row]) else low[row],
                    fallback[1, row] if np.isnan(high[row]) else high[row])
             for row, name in enumerate(metrics.METRICS)}
    return raw, fixed


def test_bootstrap_ci_defaults_are_1000_percentile_resamples_at_95_percent_seed_0_threshold_half():
    labels, scores = synthetic_scores(60, seed=21)
    _, expected = _scipy_bootstrap(labels, scores, 0.5, 1000, 0.95, 0, "percentile")
    got = metrics.bootstrap_ci(labels, scores)
    for name in metrics.METRICS:
        assert got[name] == pytest.approx(expected[name], abs=1e-12), name


def test_bootstrap_ci_uses_its_threshold_level_and_seed():
    labels, scores = synthetic_scores(80, seed=22)
    got = metrics.bootstrap_ci(labels, scores, threshold=0.3, n_resamples=300, level=0.8, seed=7)
    _, expected = _scipy_bootstrap(labels, scores, 0.3, 300, 0.8, 7, "percentile")
    _, at_half = _scipy_bootstrap(labels, scores, 0.5, 300, 0.8, 7, "percentile")
    assert got["recall"] != at_half["recall"]  # the threshold matters on these scores
    for name in metrics.METRICS:
        assert got[name] == pytest.approx(expected[name], abs=1e-12), name


def test_bca_falls_back_to_the_percentile_interval_where_it_is_undefined():
    # 3 fakes, 6 reals (found by search): some resamples predict no slice fake, so precision is
    # 0 there and 1 elsewhere; scipy's BCa interval for precision is NaN (its bias term is
    # infinite), and the fallback is the 2.5 % / 97.5 % quantiles of the same distribution.
    rng = np.random.default_rng(49)
    fakes, reals = int(rng.integers(3, 12)), int(rng.integers(3, 12))
    labels = np.r_[np.ones(fakes, int), np.zeros(reals, int)]
    scores = np.clip(rng.normal(0.5 + 0.25 * (labels * 2 - 1) * rng.uniform(0, 1.5), 0.2), 0, 1)
    raw, expected = _scipy_bootstrap(labels, scores, 0.5, 200, 0.95, 0, "BCa")
    assert (fakes, reals) == (3, 6) and np.isnan(raw["precision"][0])
    got = metrics.bootstrap_ci(labels, scores, n_resamples=200, method="BCa")
    assert got["precision"] == (0.0, 1.0)
    for name in metrics.METRICS:
        assert got[name] == pytest.approx(expected[name], abs=1e-12), name
    narrow = metrics.bootstrap_ci(labels, scores, n_resamples=200, level=0.5, method="BCa")
    _, expected_narrow = _scipy_bootstrap(labels, scores, 0.5, 200, 0.5, 0, "BCa")
    assert narrow["precision"] == pytest.approx(expected_narrow["precision"], abs=1e-12)


@pytest.mark.parametrize("n_resamples, level", [(0, 0.95), (-3, 0.95), (100, 0.0), (100, 1.0), (100, -0.5), (100, 1.5)])
def test_bootstrap_ci_rejects_impossible_settings(n_resamples, level):
    labels, scores = synthetic_scores(40, seed=23)
    with pytest.raises(ValueError, match=rf"need n_resamples >= 1 and 0 < level < 1, got {n_resamples}, {level}"):
        metrics.bootstrap_ci(labels, scores, n_resamples=n_resamples, level=level)


def test_bootstrap_ci_accepts_one_resample_and_levels_near_the_bounds():
    labels, scores = synthetic_scores(40, seed=24)
    one = metrics.bootstrap_ci(labels, scores, n_resamples=1)
    assert all(low == high for low, high in one.values())
    for level in (0.01, 0.99):
        _, expected = _scipy_bootstrap(labels, scores, 0.5, 50, level, 0, "percentile")
        got = metrics.bootstrap_ci(labels, scores, n_resamples=50, level=level)
        assert got["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)


def test_the_percentile_fallback_by_hand():
    distribution = np.stack([np.arange(101.0), np.r_[np.arange(100.0), np.nan], np.full(101, np.nan)])
    low = np.array([np.nan, 3.0, 5.0])
    high = np.array([np.nan, np.nan, 6.0])
    got_low, got_high = metrics._where_undefined_percentile(low, high, distribution, 0.9)
    # row 0: both bounds undefined → 5th and 95th percentiles of 0..100; row 1: one bound undefined is
    # enough, NaN resamples ignored (0..99); row 2: BCa's own bounds kept.
    np.testing.assert_allclose(got_low, [5.0, 4.95, 5.0])
    np.testing.assert_allclose(got_high, [95.0, 94.05, 6.0])
    got_low, got_high = metrics._where_undefined_percentile(low, high, distribution, 0.5)
    np.testing.assert_allclose(got_low[:2], [25.0, 24.75])
    np.testing.assert_allclose(got_high[:2], [75.0, 74.25])


def test_bca_keeps_its_own_interval_where_it_is_defined():
    labels, scores = synthetic_scores(80, seed=25)
    raw, expected = _scipy_bootstrap(labels, scores, 0.5, 400, 0.95, 0, "BCa")
    _, percentile = _scipy_bootstrap(labels, scores, 0.5, 400, 0.95, 0, "percentile")
    got = metrics.bootstrap_ci(labels, scores, n_resamples=400, method="BCa")
    differs = [name for name in metrics.METRICS if not np.isnan(raw[name][0]) and
               not np.allclose(raw[name], percentile[name])]
    assert "accuracy" in differs and "auc" in differs
    for name in metrics.METRICS:
        assert got[name] == pytest.approx(expected[name], abs=1e-12), name


def test_a_class_of_two_slices_is_resampled_and_a_class_of_one_is_kept():
    labels = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    scores = np.array([0.9, 0.4, 0.1, 0.2, 0.6, 0.3, 0.1, 0.2, 0.3, 0.45])
    _, expected = _scipy_bootstrap(labels, scores, 0.5, 300, 0.95, 0, "percentile")
    got = metrics.bootstrap_ci(labels, scores, n_resamples=300)
    assert got["recall"] == pytest.approx(expected["recall"], abs=1e-12) and got["recall"] == (0.0, 1.0)
    for name in metrics.METRICS:
        assert got[name] == pytest.approx(expected[name], abs=1e-12), name


def test_one_slice_per_class_is_its_own_interval_at_the_given_threshold():
    labels, scores = np.array([1, 0]), np.array([0.4, 0.2])
    assert metrics.bootstrap_ci(labels, scores, threshold=0.3)["recall"] == (1.0, 1.0)
    assert metrics.bootstrap_ci(labels, scores)["recall"] == (0.0, 0.0)


def test_h_of_a_resample_that_misses_every_fake_is_zero_without_a_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # thousands of resamples must not print a divide warning each
        row = metrics.metrics_from_indices([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], np.array([[0, 1, 2, 3], [0, 0, 2, 2]]))
    h = row[metrics.METRICS.index("h")]
    assert h.tolist() == [0.0, 0.0]


def test_defaults_the_study_reads_threshold_half_and_ten_calibration_bins():
    assert metrics.predict_labels([0.5, 0.4999, 1.0, 0.0]).tolist() == [1, 0, 1, 0]
    # 0.40 (fake) and 0.46 (real) share the bin [0.4, 0.5) of ten: |1 - 0.86| / 2; eleven bins part them
    assert metrics.expected_calibration_error([1, 0], [0.40, 0.46]) == pytest.approx(0.07)
    assert metrics.expected_calibration_error([1, 0], [0.40, 0.46], n_bins=11) == pytest.approx((0.6 + 0.46) / 2)


def test_one_class_auc_is_nan_without_asking_scikit_learn_and_lengths_must_match():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn warns (UndefinedMetricWarning) when asked anyway
        assert math.isnan(metrics.binary_metrics([0, 0, 0], [0.2, 0.6, 0.1])["auc"])
        assert math.isnan(metrics.binary_metrics([1, 1], [0.2, 0.6])["auc"])
    with pytest.raises(ValueError, match=r"^labels and scores differ in length: 3 vs 2$"):
        metrics.binary_metrics([0, 1, 0], [0.2, 0.6])
