"""Split assignment of the dataset's slices, seeded.

- ``random``: stratified by slice (the study, section 3.2); neighbouring slices of one scan may
  land in different splits.
- ``by_scan``: no scan in two splits (folds of whole scans, stratified by class).
- ``by_experiment``: cross-experiment generalisation. Train and val hold experiment-1 scans only
  (split by scan), test holds experiment-2 scans only, as DeepfakeBench trains on one data set and
  tests on another. ``split_fractions`` then sets only the train/val ratio. Slices from no
  experiment (LIDC negatives) are dealt out by scan to the splits that need negatives most.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medfake.core.errors import UserError
from medfake.data.ctgan import EXPERIMENTS

TRAIN_EXPERIMENT, TEST_EXPERIMENT = EXPERIMENTS  # by_experiment: train/val on EXP1, test on EXP2
SPLIT_ORDER = ("train", "val", "test")


def assign_splits(labels: np.ndarray, groups: np.ndarray, how: str, fractions: Sequence[float], seed: int,
                  experiments: np.ndarray | None = None) -> np.ndarray:
    """Split name per slice. ``labels``: 1 = fake, 0 = real; ``groups``: scan ids; ``experiments``:
    the CT-GAN experiment per slice ("" for LIDC), needed by ``by_experiment`` only."""
    labels = np.asarray(labels)
    groups = first_appearance_codes(np.asarray(groups))
    train_f, val_f, test_f = fractions
    if abs(train_f + val_f + test_f - 1.0) > 1e-6 or min(fractions) <= 0:
        raise UserError(f"data.split_fractions {list(fractions)} must be three positive numbers summing to 1")
    if how == "random":
        return _random(labels, fractions, seed)
    if how == "by_experiment":
        if experiments is None:
            raise ValueError("split by_experiment needs the experiment of every slice")
        return _by_experiment(labels, groups, np.asarray(experiments), fractions, seed)
    return _by_scan(labels, groups, fractions, seed)


def first_appearance_codes(groups: np.ndarray) -> np.ndarray:
    """Scan ids as 0…k−1 in the order the scans first appear among the slices.

    Scan ids are salted hashes (privacy: DESIGN §4) and the salt differs between checkouts, so
    sorting them — what scikit-learn's group splitters do — gave each checkout another split of
    the same dataset digest. The slices' order is fixed (sorted by series key and position), so
    codes by first appearance split the same data the same way everywhere.
    """
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse.reshape(-1)]


def _random(labels: np.ndarray, fractions: Sequence[float], seed: int) -> np.ndarray:
    from sklearn.model_selection import train_test_split

    train_f, val_f, test_f = fractions
    index = np.arange(len(labels))
    split = np.empty(len(labels), dtype=object)
    rest, test = train_test_split(index, test_size=test_f, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=val_f / (train_f + val_f), stratify=labels[rest], random_state=seed)
    split[train], split[val], split[test] = "train", "val", "test"
    return split


def _scan_folds(labels: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Fold per slice (whole scans, stratified by class) and the folds ordered: both classes first."""
    from sklearn.model_selection import StratifiedGroupKFold

    index = np.arange(len(labels))
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold_of = np.empty(len(labels), dtype=int)
    for k, (_, held) in enumerate(folds.split(index, labels, groups)):
        fold_of[held] = k
    both = [k for k in range(n_folds) if len(set(labels[fold_of == k])) == 2]
    return fold_of, both + [k for k in range(n_folds) if k not in both]


def _by_scan(labels: np.ndarray, groups: np.ndarray, fractions: Sequence[float], seed: int) -> np.ndarray:
    _, val_f, test_f = fractions
    if len(set(groups)) < 3:
        raise UserError(f"split by_scan needs at least 3 scans, the data has {len(set(groups))}")
    # Folds of about test_f each: one is test, the next val, the rest train.
    n_folds = max(3, min(int(round(1 / min(val_f, test_f))), len(set(groups))))
    fold_of, order = _scan_folds(labels, groups, n_folds, seed)
    split = np.full(len(labels), "train", dtype=object)
    split[fold_of == order[0]] = "test"
    split[fold_of == order[1]] = "val"
    return split


def _by_experiment(labels: np.ndarray, groups: np.ndarray, experiments: np.ndarray, fractions: Sequence[float],
                   seed: int) -> np.ndarray:
    train_f, val_f, _ = fractions
    trained = experiments == TRAIN_EXPERIMENT
    tested = experiments == TEST_EXPERIMENT
    n_trained, n_tested = len(set(groups[trained])), len(set(groups[tested]))
    if n_trained < 2 or n_tested < 1:
        raise UserError(f"split by_experiment needs at least 2 experiment-1 scans (train, val) and 1 experiment-2 "
                        f"scan (test); the data has {n_trained} and {n_tested}")
    split = np.full(len(labels), "", dtype=object)
    split[tested] = "test"
    # Folds of about val_f / (train_f + val_f) of the experiment-1 scans: one is val, the rest train.
    n_folds = max(2, min(int(round((train_f + val_f) / val_f)), n_trained))
    fold_of, order = _scan_folds(labels[trained], groups[trained], n_folds, seed)
    inner = np.full(int(trained.sum()), "train", dtype=object)
    inner[fold_of == order[0]] = "val"
    split[trained] = inner
    rest = ~(trained | tested)
    if rest.any():
        _deal_out_by_scan(labels, groups, split, rest, seed)
    return split


def _deal_out_by_scan(labels: np.ndarray, groups: np.ndarray, split: np.ndarray, rest: np.ndarray, seed: int) -> None:
    """Give each remaining scan, largest first, to the split whose fakes most outnumber its reals."""
    need = {name: int(np.sum(labels[split == name] == 1)) - int(np.sum(labels[split == name] == 0))
            for name in SPLIT_ORDER}
    names = sorted(set(groups[rest]))
    rng = np.random.default_rng(seed)
    shuffled = [names[i] for i in rng.permutation(len(names))]
    sizes = {name: int(np.sum(rest & (groups == name))) for name in names}
    for name in sorted(shuffled, key=lambda g: -sizes[g]):  # stable: ties keep the seeded order
        where = rest & (groups == name)
        target = max(SPLIT_ORDER, key=lambda s: need[s])  # first of train/val/test on a tie
        split[where] = target
        need[target] -= int(np.sum(labels[where] == 0)) - int(np.sum(labels[where] == 1))
