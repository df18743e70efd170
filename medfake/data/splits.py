"""Split assignment of the dataset's slices: ``random`` (the study, stratified by slice) or ``by_scan``
(no scan in two splits), seeded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medfake.core.errors import UserError


def assign_splits(labels: np.ndarray, groups: np.ndarray, how: str, fractions: Sequence[float], seed: int) -> np.ndarray:
    """Split name per slice. ``random``: stratified by slice (the study). ``by_scan``: no scan
    (``groups``) in two splits. ``labels`` are 1 = fake, 0 = real."""
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    labels = np.asarray(labels)
    groups = np.asarray(groups)
    index = np.arange(len(labels))
    train_f, val_f, test_f = fractions
    if abs(train_f + val_f + test_f - 1.0) > 1e-6 or min(fractions) <= 0:
        raise UserError(f"data.split_fractions {list(fractions)} must be three positive numbers summing to 1")
    split = np.empty(len(labels), dtype=object)
    if how == "random":
        rest, test = train_test_split(index, test_size=test_f, stratify=labels, random_state=seed)
        train, val = train_test_split(rest, test_size=val_f / (train_f + val_f), stratify=labels[rest], random_state=seed)
        split[train], split[val], split[test] = "train", "val", "test"
        return split
    if len(set(groups)) < 3:
        raise UserError(f"split by_scan needs at least 3 scans, the data has {len(set(groups))}")
    # Folds of about test_f each: one is test, the next val, the rest train.
    n_folds = max(3, min(int(round(1 / min(val_f, test_f))), len(set(groups))))
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold_of = np.empty(len(labels), dtype=int)
    for k, (_, held) in enumerate(folds.split(index, labels, groups)):
        fold_of[held] = k
    # Test and val are folds that hold both classes where such folds exist.
    both = [k for k in range(n_folds) if len(set(labels[fold_of == k])) == 2]
    order = both + [k for k in range(n_folds) if k not in both]
    split[:] = "train"
    split[fold_of == order[0]] = "test"
    split[fold_of == order[1]] = "val"
    return split
