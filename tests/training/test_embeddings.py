"""Latent-space separability, 2-D projections and the embeddings file."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medfake.training import embeddings
from medfake.core.errors import UserError


def clusters(n_per_class: int, distance: float, dimensions: int = 16, seed: int = 0):
    """Two Gaussian clusters (unit variance) whose means are ``distance`` apart."""
    rng = np.random.default_rng(seed)
    real = rng.normal(0.0, 1.0, (n_per_class, dimensions))
    fake = rng.normal(0.0, 1.0, (n_per_class, dimensions))
    fake[:, 0] += distance
    labels = np.repeat([0, 1], n_per_class)
    return np.vstack([real, fake]), labels


def test_well_separated_clusters_score_high():
    points, labels = clusters(60, distance=12.0)
    result = embeddings.separability(points, labels)
    assert result["silhouette"] > 0.5
    assert result["knn_acc"] > 0.95
    assert result["probe_auc"] > 0.95
    assert result["folds"] == 5 and result["neighbors"] == 5 and result["reason"] == ""


def test_overlapping_clusters_score_near_chance():
    points, labels = clusters(100, distance=0.0, seed=1)
    result = embeddings.separability(points, labels)
    assert abs(result["silhouette"]) < 0.1
    assert 0.35 < result["knn_acc"] < 0.65
    assert 0.3 < result["probe_auc"] < 0.7


def test_separability_is_deterministic_with_seed():
    points, labels = clusters(30, distance=1.0, seed=2)
    assert embeddings.separability(points, labels, seed=3) == embeddings.separability(points, labels, seed=3)


def test_tiny_samples_shrink_folds_and_never_crash():
    points, labels = clusters(3, distance=8.0, seed=4)
    result = embeddings.separability(points, labels)
    assert result["folds"] == 3 and result["neighbors"] <= 4
    assert result["knn_acc"] > 0.9 and "small sample" in result["reason"]

    one_fake = embeddings.separability(points[:4], np.array([0, 0, 0, 1]))
    assert math.isnan(one_fake["knn_acc"]) and math.isnan(one_fake["probe_auc"])
    assert not math.isnan(one_fake["silhouette"]) and "1 sample" in one_fake["reason"]

    single_class = embeddings.separability(points[:3], np.zeros(3, dtype=int))
    assert all(math.isnan(single_class[name]) for name in embeddings.SEPARABILITY_METRICS)
    assert single_class["reason"] == "only one class present"


def test_separability_rejects_bad_arrays():
    with pytest.raises(ValueError):
        embeddings.separability(np.zeros((4, 2)), np.array([0, 1, 0]))
    with pytest.raises(ValueError):
        embeddings.separability(np.zeros(4), np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError):
        embeddings.separability(np.zeros((4, 2)), np.array([0, 1, 2, 1]))


@pytest.mark.parametrize("method", sorted(embeddings.PROJECTIONS))
@pytest.mark.parametrize(("samples", "dimensions"), [(40, 8), (5, 3), (3, 6), (6, 1), (1, 4)])
def test_project_2d_shapes(method, samples, dimensions):
    points = np.random.default_rng(5).normal(size=(samples, dimensions))
    projected = embeddings.project_2d(points, method=method)
    assert projected.shape == (samples, 2)
    assert np.isfinite(projected).all()


def test_project_2d_keeps_clusters_apart_and_is_seeded():
    points, labels = clusters(25, distance=15.0, seed=6)
    for method in embeddings.PROJECTIONS:
        projected = embeddings.project_2d(points, method=method, seed=1)
        np.testing.assert_allclose(projected, embeddings.project_2d(points, method=method, seed=1))
        assert embeddings.separability(projected, labels)["knn_acc"] > 0.95
    with pytest.raises(ValueError):
        embeddings.project_2d(points, method="umap")


def test_save_and_load_round_trip(tmp_path):
    points, labels = clusters(5, distance=1.0, dimensions=4, seed=7)
    scores = np.linspace(0, 1, labels.size)
    ids = [f"scan{index // 3}-slice{index}" for index in range(labels.size)]
    path = embeddings.save_embeddings(tmp_path / "nested" / "test_embeddings", points, labels, scores, ids)
    assert path.name == "test_embeddings.npz" and path.is_file()
    loaded = embeddings.load_embeddings(path)
    np.testing.assert_allclose(loaded.embeddings, points.astype(np.float32))
    np.testing.assert_array_equal(loaded.labels, labels)
    np.testing.assert_allclose(loaded.scores, scores.astype(np.float32))
    assert loaded.ids.tolist() == ids
    with pytest.raises(ValueError):
        embeddings.save_embeddings(tmp_path / "bad.npz", points, labels, scores[:-1], ids)


def test_load_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        embeddings.load_embeddings(tmp_path / "missing.npz")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, something=np.zeros(3))
    with pytest.raises(UserError, match="not an embeddings file"):
        embeddings.load_embeddings(foreign)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot read"):
        embeddings.load_embeddings(garbage)
