"""Optuna on a real PostgreSQL: a worker killed with SIGKILL mid-trial is noticed by a survivor.

Never skipped: without PostgreSQL's initdb/pg_ctl this fails with the install line.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from medfake.core import server
from medfake.core.contract import TAG_FAILURE, TAG_STUDY, TAG_TRIAL

WORKER = """
import sys, time
import mlflow, optuna
from medfake.core import tracking
from medfake.core.contract import TAG_STUDY, TAG_TRIAL
from medfake.study.tune_storage import open_storage

storage, _ = open_storage(sys.argv[1])
study = optuna.load_study(study_name="kill", storage=storage)

def objective(trial):
    tracking.setup("medfake-kill")
    with mlflow.start_run(tags={TAG_STUDY: "kill", TAG_TRIAL: str(trial.number)}):
        print("TRIAL", trial.number, flush=True)
        time.sleep(600)
    return 0.0

study.optimize(objective, n_trials=1)
"""


@pytest.fixture
def postgres_uri():
    state = Path(tempfile.mkdtemp(prefix="medfake-optuna-test-"))
    state.chmod(0o755)  # as root the cluster runs as the postgres user, which must reach it
    cluster = server.init_postgres(state)
    cluster.start()
    try:
        uri = cluster.uri("optuna")
        server.ensure_database(uri)
        yield uri
    finally:
        cluster.stop()
        shutil.rmtree(state, ignore_errors=True)


@pytest.mark.slow
def test_killed_worker_trial_is_failed_retried_and_its_run_ended(postgres_uri, tracking_store, monkeypatch):
    import mlflow
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    from medfake.study.tune_storage import open_storage

    monkeypatch.setenv("MEDFAKE_TUNE_HEARTBEAT_S", "1")
    monkeypatch.setenv("MEDFAKE_TUNE_GRACE_S", "4")
    storage, shown = open_storage(postgres_uri)
    assert "***" in shown and storage.heartbeat_interval == 1 and storage.grace_period == 4
    study = optuna.create_study(study_name="kill", storage=storage)

    worker = subprocess.Popen([sys.executable, "-c", WORKER, postgres_uri], stdout=subprocess.PIPE, text=True,
                              env={**os.environ})
    try:
        line = worker.stdout.readline()  # the trial and its MLflow run have started
        assert line.strip() == "TRIAL 0", line
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == -signal.SIGKILL
    assert study.trials[0].state == TrialState.RUNNING  # nobody has noticed yet
    (orphan,) = mlflow.search_runs(experiment_names=["medfake-kill"], output_format="list")
    assert orphan.info.status == "RUNNING"

    time.sleep(6)  # past the grace period
    ran = []
    study.optimize(lambda trial: ran.append(trial.number) or 1.0, n_trials=1)  # the surviving worker

    trials = study.get_trials(deepcopy=False)
    assert trials[0].state == TrialState.FAIL
    retried = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == 0]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE and ran == [retried[0].number]
    run = mlflow.get_run(orphan.info.run_id)
    assert run.info.status == "FAILED"
    assert "no Optuna heartbeat" in run.data.tags[TAG_FAILURE] and run.data.tags[TAG_STUDY] == "kill"
    assert run.data.tags[TAG_TRIAL] == "0"
