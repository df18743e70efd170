"""Shared test setup: no network, a throwaway MLflow store and salt per test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("MEDFAKE_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MEDFAKE_ID_SALT", "test-salt")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")

import pytest  # noqa: E402

CHECKOUT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tracking_store(tmp_path, monkeypatch):
    """An empty MLflow store for one test; the working directory is the test's tmp folder."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    import mlflow

    mlflow.set_tracking_uri(uri)
    # MLflow remembers the active experiment across stores: an earlier test's experiment id would
    # not exist in this new store, so start every test in the store's own Default experiment.
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    mlflow.set_experiment("Default")
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def artifact(tmp_path):
    """``artifact(run_id, path)``: a run's artifact, downloaded into the test's own folder (MLflow's
    default is a new folder under /tmp per call, never removed)."""
    import mlflow

    def fetch(run_id: str, path: str) -> Path:
        folder = tempfile.mkdtemp(prefix="artifact-", dir=tmp_path)
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=folder))

    return fetch


@pytest.fixture
def project(tracking_store, tmp_path):
    """The working folder holds the project's MLproject, as when running from a clone."""
    for name in ("MLproject", "conda.yaml"):
        shutil.copy(CHECKOUT / name, tmp_path / name)
    return tmp_path
