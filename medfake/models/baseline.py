"""The floor every backbone must beat: logistic regression on a 32-bin HU histogram per slice.

A whole-slice histogram sees global anatomy and intensity, not a local tamper; what it scores
on a dataset measures how much of a detector's score could be a shortcut (e.g. LIDC negatives
differing from CT-GAN scans in anatomy) rather than tamper detection.
"""

from __future__ import annotations

import numpy as np

BINS = 32
HU_RANGE = (-1100.0, 1500.0)


def histograms(images: np.ndarray) -> np.ndarray:
    """(n, S, S[, 1]) HU slices → (n, 32) normalised histograms over a fixed HU range."""
    images = np.asarray(images, np.float32).reshape(len(images), -1)
    edges = np.linspace(*HU_RANGE, BINS + 1)
    clipped = np.clip(images, HU_RANGE[0], HU_RANGE[1] - 1e-3)
    idx = np.searchsorted(edges, clipped, side="right") - 1
    flat = (idx + BINS * np.arange(len(images))[:, None]).reshape(-1)
    counts = np.bincount(flat, minlength=len(images) * BINS).reshape(len(images), BINS)
    return counts.astype(np.float64) / images.shape[1]


def fit(images: np.ndarray, labels: np.ndarray, seed: int = 0):
    """A standardised logistic regression on the histograms."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    model.fit(histograms(images), np.asarray(labels).astype(int))
    return model


def predict(model, images: np.ndarray) -> np.ndarray:
    """Probability of 'fake' per slice."""
    return model.predict_proba(histograms(images))[:, 1].astype(np.float32)


def count_params(model) -> int:
    lr = model[-1]
    return int(lr.coef_.size + lr.intercept_.size)


def log_model(model, example: np.ndarray) -> None:
    """Log as an MLflow pyfunc model that scores HU slices (n, S, S, 1) like the detectors."""
    import mlflow
    from mlflow.models import infer_signature

    class HistogramBaseline(mlflow.pyfunc.PythonModel):
        def __init__(self, fitted):
            self.fitted = fitted

        def predict(self, context, model_input, params=None):  # noqa: ARG002
            x = np.asarray(model_input, np.float32)
            return predict(self.fitted, x.reshape(len(x), -1))

    signature = infer_signature(example, predict(model, example))
    mlflow.pyfunc.log_model(name="model", python_model=HistogramBaseline(model), signature=signature,
                            input_example=example)
