"""Runs under ``mlflow run``: the launcher logs the entry point's raw -P values first."""
from __future__ import annotations

import mlflow

from medfake.core import tracking


def _launcher_run(monkeypatch, experiment: str) -> str:
    """What ``mlflow run . -e train -P model=xception`` leaves before the step starts."""
    experiment_id = mlflow.set_experiment(experiment).experiment_id
    client = mlflow.MlflowClient()
    run_id = client.create_run(experiment_id).info.run_id
    for key, value in {"model": "xception", "seed": "''", "config": "quickstart", "set": "''"}.items():
        client.log_param(run_id, key, value)
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    return run_id


def test_resolved_values_of_launcher_params_become_tags(tracking_store, monkeypatch):
    launcher = _launcher_run(monkeypatch, "exp-a")
    with tracking.run("exp-a", "Xception-s42", "screen") as active:
        assert active.info.run_id == launcher
        tracking.log_params({"model": "Xception", "seed": 42, "config": "quickstart", "train.batch_size": 16})
    run = mlflow.get_run(launcher)
    assert run.info.status == "FINISHED"
    assert run.data.params["seed"] == "''" and run.data.params["train.batch_size"] == "16"
    assert run.data.tags["medfake.resolved.seed"] == "42"
    assert run.data.tags["medfake.resolved.model"] == "Xception"
    assert "medfake.resolved.config" not in run.data.tags  # same value: nothing to resolve
    merged = tracking.params_of(run)
    assert merged["seed"] == "42" and merged["model"] == "Xception" and merged["config"] == "quickstart"


def test_without_a_launcher_params_are_plain(tracking_store):
    with tracking.run("exp-b", "plain", "screen") as active:
        tracking.log_params({"seed": 7})
    run = mlflow.get_run(active.info.run_id)
    assert run.data.params["seed"] == "7"
    assert not any(key.startswith(tracking.TAG_RESOLVED_PREFIX) for key in run.data.tags)

