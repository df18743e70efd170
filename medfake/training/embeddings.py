"""Latent space of a detector (study Fig. 4) as numbers and as 2-D maps.

The study only *looks* at penultimate-layer (256-d) embeddings and circles "areas of
collision". Here separability is also measured: silhouette width, k-nearest-neighbour
accuracy and a linear-probe AUC, each by stratified cross-validation. Labels: 1 = fake.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from medfake.core.errors import UserError

#: The numeric separability measures returned by :func:`separability` (MLflow-loggable).
SEPARABILITY_METRICS = ("silhouette", "knn_acc", "probe_auc")
#: Neighbours and folds used when the data allow it.
NEIGHBOURS = 5
FOLDS = 5
#: Silhouette is O(n²): above this many points it is computed on a seeded sample.
SILHOUETTE_SAMPLE = 5000
#: t-SNE perplexity used when there are enough points (sklearn's default).
PERPLEXITY = 30.0


def _validated(embeddings, labels) -> tuple[np.ndarray, np.ndarray]:
    points = np.asarray(embeddings, dtype=np.float64)
    classes = np.asarray(labels)
    if points.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (samples, features), got shape {points.shape}")
    if classes.shape != (points.shape[0],):
        raise ValueError(f"need one label per embedding: {classes.shape} labels, {points.shape[0]} rows")
    if not np.isfinite(points).all():
        raise ValueError("embeddings contain NaN or infinity")
    if classes.size and not np.isin(classes, (0, 1)).all():
        raise ValueError(f"labels must be binary 0/1 (1 = fake), got {np.unique(classes)[:5]}")
    return points, classes.astype(np.int64)


def separability(embeddings, labels, seed: int = 0) -> dict:
    """How well real and fake embeddings separate (numbers behind Fig. 4).

    Returns ``silhouette`` (euclidean, in [-1, 1]), ``knn_acc`` (k-NN accuracy, k = 5) and
    ``probe_auc`` (standardised logistic-regression AUC from out-of-fold predictions), plus
    ``folds`` and ``neighbors`` actually used and ``reason`` ("" or why a value is NaN).
    With fewer than 5 samples of a class, folds and neighbours shrink to what the smaller
    class allows; with fewer than 2 per class the cross-validated values are NaN.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score, silhouette_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    points, classes = _validated(embeddings, labels)
    result = {name: math.nan for name in SEPARABILITY_METRICS}
    result.update(folds=0, neighbors=0, reason="")
    smaller_class = int(min(np.sum(classes == 0), np.sum(classes == 1)))
    if smaller_class == 0:
        result["reason"] = "only one class present"
        return result
    if points.shape[0] >= 3:
        result["silhouette"] = float(
            silhouette_score(
                points,
                classes,
                metric="euclidean",
                sample_size=min(points.shape[0], SILHOUETTE_SAMPLE),
                random_state=seed,
            )
        )
    if smaller_class < 2:
        result["reason"] = f"a class has {smaller_class} sample: cross-validation needs 2 per class"
        return result
    folds = min(FOLDS, smaller_class)
    # An odd k no larger than twice the smaller class's training count minus one lets a
    # point's own class win the vote even when that class is tiny.
    smaller_class_in_training = smaller_class - math.ceil(smaller_class / folds)
    neighbours = max(1, min(NEIGHBOURS, 2 * smaller_class_in_training - 1))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    knn = KNeighborsClassifier(n_neighbors=neighbours)
    result["knn_acc"] = float(cross_val_score(knn, points, classes, cv=splitter, scoring="accuracy").mean())
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    fake_probability = cross_val_predict(probe, points, classes, cv=splitter, method="predict_proba")[:, 1]
    result["probe_auc"] = float(roc_auc_score(classes, fake_probability))
    result.update(folds=folds, neighbors=neighbours)
    if folds < FOLDS or neighbours < NEIGHBOURS:
        result["reason"] = f"small sample: {folds} folds, {neighbours} neighbours"
    return result


def _pca(points: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    components = min(2, *points.shape)
    projected = PCA(n_components=components, random_state=seed).fit_transform(points)
    return np.pad(projected, ((0, 0), (0, 2 - components)))


EXACT_TSNE_MAX = 2000


def _tsne(points: np.ndarray, seed: int) -> np.ndarray:
    """t-SNE with PCA initialisation; perplexity kept below n/3 so tiny sets still work."""
    from sklearn.manifold import TSNE

    if points.shape[0] < 4:  # t-SNE needs perplexity >= 1 < n/3: fall back to PCA
        return _pca(points, seed)
    if points.shape[1] < 2:
        points = np.pad(points, ((0, 0), (0, 2 - points.shape[1])))
    if np.unique(points, axis=0).shape[0] < 4:  # (nearly) all points equal, e.g. dead ReLUs
        return _pca(points, seed)
    perplexity = min(PERPLEXITY, (points.shape[0] - 1) / 3.0)
    # Exact gradients up to a few thousand points: Barnes-Hut crashed (segfault) in scikit-learn
    # on small, degenerate embeddings, and exact t-SNE of a test set (study: 373) is quick.
    method = "exact" if points.shape[0] <= EXACT_TSNE_MAX else "barnes_hut"
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed,
                method=method)
    return tsne.fit_transform(points)


#: Name → function mapping embeddings (n, d) to points (n, 2).
PROJECTIONS = {"tsne": _tsne, "pca": _pca}


def project_2d(embeddings, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """Map embeddings to 2-D for plotting (Fig. 4): ``"tsne"`` or ``"pca"`` (see PROJECTIONS)."""
    points = np.asarray(embeddings, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty 2-D array, got shape {points.shape}")
    if method not in PROJECTIONS:
        raise ValueError(f"unknown projection {method!r}; choose from {sorted(PROJECTIONS)}")
    if points.shape[0] == 1:
        return np.zeros((1, 2))
    return np.asarray(PROJECTIONS[method](points, seed), dtype=np.float64)


class EmbeddingSet(NamedTuple):
    """Embeddings of one split with what is needed to plot and score them (no patient data:
    ``ids`` are salted hashes or slice keys, never DICOM identifiers)."""

    embeddings: np.ndarray  # (n, d) float32
    labels: np.ndarray  # (n,) int8, 1 = fake
    scores: np.ndarray  # (n,) float32, probability of fake
    ids: np.ndarray  # (n,) str


def save_embeddings(path, embeddings, labels, scores, ids) -> Path:
    """Write an ``.npz`` (no pickles) with arrays ``embeddings labels scores ids``; returns the path."""
    points, classes = _validated(embeddings, labels)
    scores = np.asarray(scores, dtype=np.float32)
    ids = np.asarray([str(item) for item in ids])
    if scores.shape != classes.shape or ids.shape != classes.shape:
        raise ValueError(
            f"need one score and id per embedding: {scores.shape}, {ids.shape} for {classes.shape[0]} rows"
        )
    target = Path(path)
    if target.suffix != ".npz":
        target = target.with_name(target.name + ".npz")
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        target, embeddings=points.astype(np.float32), labels=classes.astype(np.int8), scores=scores, ids=ids
    )
    return target


def load_embeddings(path) -> EmbeddingSet:
    """Read a file written by :func:`save_embeddings`; a missing or foreign file is a UserError."""
    source = Path(path)
    if not source.is_file():
        raise UserError(f"embeddings file not found: {source}")
    try:
        with np.load(source, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in EmbeddingSet._fields}
    except KeyError as missing:
        raise UserError(f"{source}: not an embeddings file (array {missing} missing)") from None
    except (OSError, ValueError) as error:
        raise UserError(f"{source}: cannot read embeddings ({error})") from None
    return EmbeddingSet(**arrays)
