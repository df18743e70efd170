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


def _scans(spec):
    """(scan id, experiment, fakes, reals) per scan -> labels, groups, experiments per slice."""
    labels, groups, experiments = [], [], []
    for name, exp, fakes, reals in spec:
        labels += [1] * fakes + [0] * reals
        groups += [name] * (fakes + reals)
        experiments += [exp] * (fakes + reals)
    return np.array(labels), np.array(groups), np.array(experiments)


def _scan_count(split, groups, name: str) -> int:
    return len(set(groups[split == name]))


@pytest.mark.parametrize("n_scans, fractions, expected", [
    (20, FRACTIONS, {"train": 14, "val": 3, "test": 3}),   # folds of ~15 %: 7 folds of 20 scans
    (9, (0.4, 0.3, 0.3), {"train": 3, "val": 3, "test": 3}),  # folds of ~30 %: 3 folds
    (3, FRACTIONS, {"train": 1, "val": 1, "test": 1}),     # the fewest scans by_scan accepts
])
def test_by_scan_gives_each_split_its_fraction_of_the_scans(n_scans, fractions, expected):
    labels, groups, _ = _scans([(f"s{k:02d}", "", 6, 6) for k in range(n_scans)])
    split = assign_splits(labels, groups, "by_scan", fractions, seed=0)
    assert {name: _scan_count(split, groups, name) for name in expected} == expected
    np.testing.assert_array_equal(split, assign_splits(labels, groups, "by_scan", fractions, seed=0))


def test_by_scan_needs_three_scans():
    labels, groups, _ = _scans([("s0", "", 6, 6), ("s1", "", 6, 6)])
    with pytest.raises(UserError, match="by_scan needs at least 3 scans, the data has 2"):
        assign_splits(labels, groups, "by_scan", FRACTIONS, seed=0)


@pytest.mark.parametrize("fake_scans", [1, 2])
def test_by_scan_puts_both_classes_in_test_first_then_val(fake_scans):
    # CT-GAN scans with LIDC negatives: every scan is all-fake or all-real, so only some folds hold both.
    spec = [(f"fake{k}", "", 10, 0) for k in range(fake_scans)] + [(f"real{k:02d}", "", 0, 10) for k in range(12 - fake_scans)]
    labels, groups, _ = _scans(spec)
    split = assign_splits(labels, groups, "by_scan", FRACTIONS, seed=0)
    assert set(split) == {"train", "val", "test"}
    assert set(labels[split == "test"]) == {0, 1}
    if fake_scans == 2:
        assert set(labels[split == "val"]) == {0, 1}


def test_by_experiment_holds_out_its_val_fraction_of_the_experiment_1_scans():
    labels, groups, experiments = _scans([(f"a{k:02d}", TRAIN_EXPERIMENT, 6, 0) for k in range(12)]
                                         + [("b0", TEST_EXPERIMENT, 6, 0)])
    split = assign_splits(labels, groups, "by_experiment", FRACTIONS, seed=0, experiments=experiments)
    # val / (train + val) = 0.15 / 0.85: folds of 2 of the 12 experiment-1 scans, one of them val.
    assert {name: _scan_count(split, groups, name) for name in ("train", "val", "test")} == {
        "train": 10, "val": 2, "test": 1}


def test_by_experiment_accepts_two_experiment_1_scans_and_one_experiment_2_scan():
    labels, groups, experiments = _scans([("a0", TRAIN_EXPERIMENT, 6, 0), ("a1", TRAIN_EXPERIMENT, 6, 0),
                                          ("b0", TEST_EXPERIMENT, 6, 0)])
    split = assign_splits(labels, groups, "by_experiment", FRACTIONS, seed=0, experiments=experiments)
    assert {name: _scan_count(split, groups, name) for name in ("train", "val", "test")} == {
        "train": 1, "val": 1, "test": 1}


def test_lidc_scans_go_largest_first_to_the_split_short_of_reals():
    # Fakes: train 20 (two of the three experiment-1 scans), val 10, test 10. LIDC scans of 10, 8, 6,
    # 4, 2 reals, largest first, each to the split whose fakes most outnumber its reals (ties: train,
    # val, test): 10 and 8 -> train, 6 -> val, 4 and 2 -> test.
    labels, groups, experiments = _scans(
        [(f"a{k}", TRAIN_EXPERIMENT, 10, 0) for k in range(3)] + [("b0", TEST_EXPERIMENT, 10, 0)]
        + [("lidc-a", "", 0, 2), ("lidc-b", "", 0, 4), ("lidc-c", "", 0, 6), ("lidc-d", "", 0, 8),
           ("lidc-e", "", 0, 10)])
    split = assign_splits(labels, groups, "by_experiment", FRACTIONS, seed=0, experiments=experiments)
    lidc = experiments == ""
    assert {name: sorted(set(groups[lidc & (split == name)])) for name in ("train", "val", "test")} == {
        "train": ["lidc-d", "lidc-e"], "val": ["lidc-c"], "test": ["lidc-a", "lidc-b"]}
    assert {name: int((labels[split == name] == 0).sum()) for name in ("train", "val", "test")} == {
        "train": 18, "val": 6, "test": 6}


def test_by_experiment_validates_on_a_fold_with_both_classes():
    # Matched negatives come from the labelled scans: only a0 holds both classes; 6 scans give 6 folds.
    labels, groups, experiments = _scans([("a0", TRAIN_EXPERIMENT, 6, 6)]
                                         + [(f"a{k}", TRAIN_EXPERIMENT, 6, 0) for k in range(1, 6)]
                                         + [("b0", TEST_EXPERIMENT, 6, 6)])
    split = assign_splits(labels, groups, "by_experiment", FRACTIONS, seed=0, experiments=experiments)
    assert sorted(set(groups[split == "val"])) == ["a0"]


def test_random_split_keeps_the_class_ratio_in_every_split():
    labels = np.array([1] * 20 + [0] * 180)  # one fake in ten
    for seed in range(5):  # an unstratified draw would miss one in ten in some split for some seed
        split = assign_splits(labels, np.arange(200).astype(str), "random", FRACTIONS, seed=seed)
        sizes = {name: (int((split == name).sum()), int(labels[split == name].sum())) for name in ("train", "val", "test")}
        assert sizes == {"train": (139, 14), "val": (31, 3), "test": (30, 3)}, seed


def test_by_experiment_without_experiments_is_a_programming_error():
    labels, groups, _ = _slices()
    with pytest.raises(ValueError, match="^split by_experiment needs the experiment of every slice$"):
        assign_splits(labels, groups, "by_experiment", FRACTIONS, seed=0)


@pytest.mark.parametrize("how", ["by_scan", "by_experiment"])
def test_scan_splits_do_not_depend_on_the_checkouts_salt(how):
    """Scan ids are salted hashes and every checkout has its own salt: the same slices must still
    split the same way (two clones once got 179 and 199 test slices from one dataset digest)."""
    from medfake.io.privacy import deidentify

    rng = np.random.default_rng(5)
    scans = [f"EXP{1 + (k % 3 == 0)}/{1000 + k}" for k in range(30)]
    rows = [(scan, int(rng.integers(0, 2))) for scan in scans for _ in range(int(rng.integers(4, 12)))]
    labels = np.array([label for _, label in rows])
    experiments = np.array([scan.split("/")[0] for scan, _ in rows])
    splits = []
    for salt in ("one-checkout", "another-checkout"):
        groups = np.array([deidentify("ctgan", scan, salt=salt) for scan, _ in rows])
        splits.append(assign_splits(labels, groups, how, (0.7, 0.15, 0.15), 42, experiments=experiments))
    assert set(splits[0]) == {"train", "val", "test"}
    assert list(splits[0]) == list(splits[1])
