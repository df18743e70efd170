"""The Launcher ends a launched run whose process died (a real SIGKILL) or went stale FAILED and launches it once more."""

from __future__ import annotations

import os
import sys

import pytest
from study_fakes import ProcessLaunch

from medfake.core.contract import TAG_FAILURE
from medfake.study.launcher import Launcher, TrainJob

EXPERIMENT = "relaunch-test"
JOB = TrainJob(model="Xception", seed=7, stage="screen", config="quickstart", overrides="",
               data_digest="d" * 16, config_digest="c" * 16)


def runs_by_status():
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return {run.info.run_id: (run.info.status, run.data.tags.get(TAG_FAILURE, "")) for run in runs}


@pytest.fixture
def launched(tracking_store, tmp_path):
    made = []

    def make(actions, via_mlflow=False, stale_after_s=600.0):
        """Heartbeats are judged only where a test shortens ``stale_after_s``: on a loaded machine a
        healthy step could otherwise be taken for stale between two of its store writes."""
        launch = ProcessLaunch(EXPERIMENT, tmp_path, actions, via_mlflow=via_mlflow)
        made.append(launch)
        lines: list[str] = []
        launcher = Launcher(EXPERIMENT, launch=launch, say=lines.append, stale_after_s=stale_after_s, poll_s=0.2)
        return launch, lines, launcher

    yield make
    for launch in made:
        launch.stop_all()


def test_killed_run_is_ended_failed_and_launched_again_once(launched):
    launch, lines, launcher = launched(["die", "finish"])
    done, failures = launcher.run_jobs([JOB], "screen")
    (_, first), (_, second) = launch.submitted
    assert first.command_proc.returncode == -9  # really killed, by SIGKILL
    assert failures == [] and done == {JOB: second.run_id}
    runs = runs_by_status()
    assert runs[second.run_id] == ("FINISHED", "")
    status, why = runs[first.run_id]
    assert status == "FAILED"
    assert why == f"process gone (exit -9) while RUNNING; relaunched as run {second.run_id}"
    assert "RUNNING" not in {status for status, _ in runs.values()}
    assert sum("launching it again" in line for line in lines) == 1


def test_a_job_that_dies_twice_is_a_failure(launched):
    launch, lines, launcher = launched(["die", "die"])
    done, failures = launcher.run_jobs([JOB], "screen")
    (_, first), (_, second) = launch.submitted
    assert done == {}
    assert failures == [f"Xception-s7 ({second.run_id}, FAILED: process gone (exit -9) while RUNNING)"]
    runs = runs_by_status()
    assert runs[first.run_id][0] == runs[second.run_id][0] == "FAILED"
    assert runs[second.run_id][1] == "process gone (exit -9) while RUNNING; died 2 times, not relaunched"
    assert len(runs) == 2  # launched twice, never a third time


def test_a_run_that_failed_by_itself_is_not_launched_again(launched):
    launch, lines, launcher = launched(["raise", "finish"])
    done, failures = launcher.run_jobs([JOB], "screen")
    (_, only), = launch.submitted
    assert done == {} and failures == [f"Xception-s7 ({only.run_id}, FAILED)"]
    assert runs_by_status() == {only.run_id: ("FAILED", "RuntimeError: broken on purpose")}


def test_a_stale_heartbeat_stops_the_process_and_launches_it_again(launched):
    launch, lines, launcher = launched(["hang", "finish"], stale_after_s=5.0)
    done, failures = launcher.run_jobs([JOB], "screen")
    (_, first), (_, second) = launch.submitted
    assert first.command_proc.returncode == -9  # the hung process was stopped, not left behind
    assert failures == [] and done == {JOB: second.run_id}
    status, why = runs_by_status()[first.run_id]
    assert status == "FAILED"
    assert why.startswith("no heartbeat for ") and why.endswith(f"relaunched as run {second.run_id}")


def test_a_step_killed_under_mlflow_run_is_launched_again(launched, monkeypatch):
    """The local backend's real chain: ``mlflow.projects.run`` → ``mlflow run`` → the step, the step
    SIGKILLed. ``mlflow run`` then ends the run FAILED itself, without ``medfake.failure``."""
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    launch, lines, launcher = launched(["die", "finish"], via_mlflow=True)
    done, failures = launcher.run_jobs([JOB], "screen")
    (_, first), (_, second) = launch.submitted
    assert failures == [] and done == {JOB: second.run_id}
    runs = runs_by_status()
    status, why = runs[first.run_id]
    assert status == "FAILED"
    assert "died without ending its run (launcher exit 1" in why and why.endswith(f"relaunched as run {second.run_id}")
    assert runs[second.run_id][0] == "FINISHED"
    assert "RUNNING" not in {status for status, _ in runs.values()}
