"""medfake.data.splits: random, by_scan and by_experiment assignments on plain arrays."""

from __future__ import annotations

import numpy as np
import pytest

from medfake.core.errors import UserError
from medfake.data.splits import TEST_EXPERIMENT, TRAIN_EXPERIMENT, assign_splits

FRACTIONS = (0.70, 0.15, 0.15)


def _slices(n_exp1: int = 8, n_exp2: int = 3, n_lidc: int = 10, per_scan: int = 12):
    """Per scan: half fakes, half reals (CT-GAN), or all reals (LIDC, no experiment)."""
    labels, groups, experiments = [], [], []
    for exp, count in ((TRAIN_EXPERIMENT, n_exp1), (TEST_EXPERIMENT, n_exp2)):
        for k in range(count):
            labels += [1] * (per_scan // 2) + [0] * (per_scan // 4)
            groups += [f"{exp}-{k}"] * (per_scan // 2 + per_scan // 4)
            experiments += [exp] * (per_scan // 2 + per_scan // 4)
    for k in range(n_lidc):
        labels += [0] * (per_scan // 4)
        groups += [f"lidc-{k}"] * (per_scan // 4)
        experiments += [""] * (per_scan // 4)
    return np.array(labels), np.array(groups), np.array(experiments)


def test_by_experiment_never_mixes_the_experiments():
    labels, groups, experiments = _slices()
    split = assign_splits(labels, groups, "by_experiment", FRACTIONS, seed=3, experiments=experiments)
    assert set(split[experiments == TEST_EXPERIMENT]) == {"test"}
    assert set(split[experiments == TRAIN_EXPERIMENT]) == {"train", "val"}
    for group in set(groups):  # whole scans, also for LIDC
        assert len(set(split[groups == group])) == 1
    for name in ("train", "val", "test"):
        part = labels[split == name]
        assert 0.35 < part.mean() < 0.65, f"{name}: {part.mean():.2f} fakes"  # LIDC reals dealt out where needed
    again = assign_splits(labels, groups, "by_experiment", FRACTIONS, seed=3, experiments=experiments)
    np.testing.assert_array_equal(split, again)


def test_by_experiment_needs_both_experiments():
    labels, groups, experiments = _slices(n_exp2=0)
    with pytest.raises(UserError, match="at least 2 experiment-1 scans .* and 1 experiment-2 scan"):
        assign_splits(labels, groups, "by_experiment", FRACTIONS, seed=0, experiments=experiments)


def test_by_scan_and_random_are_unchanged_in_kind():
    labels, groups, _ = _slices(n_lidc=0)
    by_scan = assign_splits(labels, groups, "by_scan", FRACTIONS, seed=1)
    assert all(len(set(by_scan[groups == g])) == 1 for g in set(groups))
    assert set(by_scan) == {"train", "val", "test"}
    random = assign_splits(labels, groups, "random", FRACTIONS, seed=1)
    assert abs((random == "test").mean() - 0.15) < 0.03
    with pytest.raises(UserError, match="split_fractions"):
        assign_splits(labels, groups, "random", (0.5, 0.5, 0.5), seed=1)
