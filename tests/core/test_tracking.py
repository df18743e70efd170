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


def test_steps_started_together_on_a_new_local_store_all_start(tmp_path):
    """Two `medfake train` started at once on a fresh ./mlflow.db both ran MLflow's table migration
    and one died ('duplicate column name: step'); real processes, released at the same instant."""
    import os
    import subprocess
    import sys
    import time

    start = time.time() + 4.0
    code = (
        "import time\n"
        "from medfake.core import tracking\n"
        f"time.sleep(max(0.0, {start} - time.time()))\n"
        "tracking.setup('medfake-race')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 3, "\n".join(o[-400:] for o in outputs)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert mlflow.get_experiment_by_name("medfake-race") is not None
