"""`medfake runs --stale [--end]`: a run whose process was SIGKILLed is found and ended FAILED."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from medfake.core.contract import TAG_FAILURE, TAG_HEARTBEAT, TAG_PROCESS

WORKER = """
import time
from medfake.core import tracking
with tracking.run("medfake-stale", "Xception-s42", "screen"):
    print("STARTED", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
def test_killed_and_silent_runs_are_stale_and_ended_failed(tracking_store, capsys):
    import mlflow
    from mlflow.tracking import MlflowClient

    from medfake.cli import main
    from medfake.core import tracking

    worker = subprocess.Popen([sys.executable, "-c", WORKER], stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert worker.stdout.readline().strip() == "STARTED"
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    client = MlflowClient()
    experiment_id = tracking.setup("medfake-stale")
    (killed,) = client.search_runs([experiment_id])
    assert killed.info.status == "RUNNING" and killed.data.tags[TAG_PROCESS].endswith(f":{worker.pid}")
    silent = client.create_run(experiment_id, run_name="silent",
                               tags={TAG_HEARTBEAT: str(int(time.time()) - 1000), TAG_PROCESS: "elsewhere:1"})
    alive = client.create_run(experiment_id, run_name="alive",
                              tags={TAG_HEARTBEAT: str(int(time.time())), TAG_PROCESS: f"{socket.gethostname()}:{os.getpid()}"})

    capsys.readouterr()
    assert main(["runs", "--stale", "--experiment", "medfake-stale"]) == 0
    listed = capsys.readouterr().out
    assert killed.info.run_id in listed and silent.info.run_id in listed and alive.info.run_id not in listed
    assert main(["runs", "--experiment", "medfake-stale"]) == 0
    assert alive.info.run_id in capsys.readouterr().out
    assert main(["runs", "--end"]) == 2

    assert main(["runs", "--stale", "--end", "--experiment", "medfake-stale"]) == 0
    assert "ended 2 run(s) FAILED" in capsys.readouterr().out
    killed_now, silent_now = mlflow.get_run(killed.info.run_id), mlflow.get_run(silent.info.run_id)
    assert killed_now.info.status == "FAILED" and "is gone" in killed_now.data.tags[TAG_FAILURE]
    assert silent_now.info.status == "FAILED" and "no heartbeat for" in silent_now.data.tags[TAG_FAILURE]
    assert mlflow.get_run(alive.info.run_id).info.status == "RUNNING"
    client.set_terminated(alive.info.run_id, "FINISHED")
