"""Fake select/screen runs in a throwaway MLflow store, shared by the study tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from medfake.models import published as study
from medfake.cli import main
from medfake.core.config import load_config

EXPERIMENT = "select-test"
CHECKOUT = Path(__file__).resolve().parent.parent


def base_config(experiment=EXPERIMENT):
    return load_config("quickstart", [f"experiment={experiment}"])


def study_metrics(model: str, split: str = "test") -> dict[str, float]:
    """The study's Table 1 row as MLflow metrics of one split."""
    return {f"{split}_{name}": value for name, value in study.TABLE1[model].items()}


def full_metrics(model: str, rng: np.random.Generator | None = None) -> dict[str, float]:
    """Study test metrics plus val metrics, CIs, confusion counts and efficiency numbers."""
    metrics = study_metrics(model, "test") | study_metrics(model, "val")
    for name in ("accuracy", "f1", "auc"):
        metrics[f"test_{name}_ci_low"] = metrics[f"test_{name}"] - 0.01
        metrics[f"test_{name}_ci_high"] = min(1.0, metrics[f"test_{name}"] + 0.01)
    metrics |= {"test_tp": 9, "test_fp": 1, "test_tn": 8, "test_fn": 2, "params_m": study.TABLE3[model]["params_m"],
                "latency_ms_mean": 10.0 + len(model), "latency_ms_std": 1.5, "phase1_seconds": 3.0, "phase2_seconds": 4.0}
    return metrics


def fake_predictions(seed: int, n: int = 40, flip: float = 0.1) -> pd.DataFrame:
    """A test-set predictions table in the train step's layout."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    scores = np.clip(labels * 0.6 + rng.uniform(0, 0.4, n), 0, 1)
    flipped = rng.uniform(size=n) < flip
    scores[flipped] = 1 - scores[flipped]
    return pd.DataFrame({"scan_id": [f"s{i // 4:03d}" for i in range(n)], "source": "ctgan", "slice": np.arange(n),
                         "label": labels, "label_type": np.where(labels == 1, "FM", "TB"),
                         "score": np.round(scores, 6), "predicted": (scores >= 0.5).astype(int)})


def fake_run(model: str, seed: int = 42, metrics: dict | None = None, stage: str = "screen", data_digest: str = "d" * 16,
             cfg=None, predictions: pd.DataFrame | None = None, experiment: str = EXPERIMENT, parent: str = "",
             status: str = "FINISHED") -> str:
    """Log a run the way the train step does (config params + digest tag + config.yaml), without training.

    Client calls only, so it also works while a select run is the active run (as a launched run would).
    """
    import time

    import mlflow
    from mlflow.entities import Metric, Param

    from medfake.core import tracking

    cfg = (cfg or base_config(experiment)).replace(**{"model.backbone": model, "seed": seed})
    tracking.setup(experiment)
    client = mlflow.MlflowClient()
    tags = {"medfake.stage": stage, "medfake.data_digest": data_digest, "medfake.model": model,
            "medfake.config_digest": cfg.digest(), "medfake.device": "cpu: test (2 cores)"}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run_id = client.create_run(client.get_experiment_by_name(experiment).experiment_id,
                               run_name=f"{model}-s{seed}", tags=tags).info.run_id
    params = {k: "null" if v is None else str(v) for k, v in cfg.flat().items()}
    params |= {"model": model, "data_digest": data_digest, "precision_used": "float32"}
    now = int(time.time() * 1000)
    values = metrics if metrics is not None else full_metrics(model)
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                     metrics=[Metric(k, float(v), now, 0) for k, v in values.items()])
    client.log_text(run_id, cfg.to_yaml(), "config.yaml")
    if predictions is not None:
        client.log_text(run_id, predictions.to_csv(index=False), "predictions/test.csv")
    client.set_terminated(run_id, status)
    return run_id


class FakeSubmitted:
    def __init__(self, run_id: str):
        self.run_id = run_id

    def get_status(self):
        import mlflow

        return mlflow.get_run(self.run_id).info.status

    def wait(self):
        return self.get_status() == "FINISHED"

    def cancel(self):
        pass


class FakeLauncher:
    """Stands in for ``launcher.launch_train`` (or a ``Launcher``'s ``launch``): logs the run the
    train entry point would log, from the job's parameters."""

    def __init__(self, fail_models=(), interrupt_after: int | None = None, metrics=None):
        self.jobs = []
        self.fail_models = set(fail_models)
        self.interrupt_after = interrupt_after
        self.metrics = metrics or (lambda job: full_metrics(job.model if job.model in study.TABLE1 else "VGG19"))

    def __call__(self, job, experiment=None, project=".", backend="local", backend_config=None):
        if self.interrupt_after is not None and len(self.jobs) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.jobs.append(job)
        params = job.parameters()
        cfg = load_config(params["config"], [item for item in params["set"].split() if item])
        cfg = cfg.replace(seed=int(params["seed"]))
        status = "FAILED" if job.model in self.fail_models else "FINISHED"
        run_id = fake_run(job.model, int(params["seed"]), self.metrics(job), stage=params["stage"], data_digest=params["data"],
                          cfg=cfg, experiment=cfg.experiment, parent=params["parent"], status=status,
                          predictions=fake_predictions(int(params["seed"])))
        return FakeSubmitted(run_id)


# -- launched runs backed by real processes (the Launcher's watch for dead runs) ---------------------
# The step a launched process runs: attach to its run as the train step does (tracking.run under
# MLFLOW_RUN_ID: process and heartbeat tags), then finish, raise, SIGKILL itself, or hang with a
# heartbeat an hour old. Heartbeat thread slowed down so only the test decides the heartbeat's age.
CHILD_STEP = """
import os, signal, sys, time
from mlflow.tracking import MlflowClient
from medfake.core import tracking
from medfake.core.contract import TAG_HEARTBEAT

tracking.HEARTBEAT_S = 3600
action, experiment, name = sys.argv[1:4]
with tracking.run(experiment, name, "screen") as run:
    if action == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "raise":
        raise RuntimeError("broken on purpose")
    elif action == "hang":
        MlflowClient().set_tag(run.info.run_id, TAG_HEARTBEAT, str(int(time.time()) - 3600))
        time.sleep(120)
"""

CHILD_MLPROJECT = """name: relaunch-test
entry_points:
  main:
    parameters: {action: string, experiment: string, name: string}
    command: "python child_step.py {action} {experiment} {name}"
"""


class ProcessSubmitted:
    """A launched run in a real process, shaped like MLflow's ``LocalSubmittedRun`` (``command_proc``
    is the process, the leader of its own process group)."""

    def __init__(self, run_id: str, argv: list[str]):
        self.run_id = run_id
        self.command_proc = subprocess.Popen(argv, env=os.environ | {"MLFLOW_RUN_ID": run_id}, start_new_session=True)

    def get_status(self):
        code = self.command_proc.poll()
        return "RUNNING" if code is None else "FINISHED" if code == 0 else "FAILED"

    def wait(self):
        return self.command_proc.wait() == 0

    def cancel(self):
        if self.command_proc.poll() is None:
            self.command_proc.terminate()
        self.command_proc.wait()


class ProcessLaunch:
    """A ``Launcher.launch``: the k-th launch of a job runs ``actions[k]`` of :data:`CHILD_STEP` in
    a real process. ``via_mlflow``: through ``mlflow.projects.run`` (asynchronous, local backend:
    ``mlflow run`` starts the step as its child) on a tiny MLproject in ``folder``, as
    ``launch_train`` does; else the step process is started directly in a run created here."""

    def __init__(self, experiment: str, folder: Path, actions: list[str], via_mlflow: bool = False):
        self.experiment, self.folder, self.actions, self.via_mlflow = experiment, Path(folder), list(actions), via_mlflow
        self.submitted: list = []
        (self.folder / "child_step.py").write_text(CHILD_STEP)
        (self.folder / "MLproject").write_text(CHILD_MLPROJECT)

    def __call__(self, job):
        import mlflow
        from mlflow.tracking import MlflowClient

        from medfake.core import tracking

        action = self.actions[sum(1 for s in self.submitted if s[0] == job)]
        if self.via_mlflow:  # needs this venv's bin folder first on PATH (`mlflow`, `python`)
            submitted = mlflow.projects.run(
                uri=str(self.folder), parameters={"action": action, "experiment": self.experiment, "name": job.run_name},
                experiment_name=self.experiment, env_manager="local", synchronous=False, run_name=job.run_name)
        else:
            experiment_id = tracking.setup(self.experiment)
            run_id = MlflowClient().create_run(experiment_id, run_name=job.run_name).info.run_id
            submitted = ProcessSubmitted(run_id, [sys.executable, str(self.folder / "child_step.py"), action,
                                                  self.experiment, job.run_name])
        self.submitted.append((job, submitted))
        return submitted

    def stop_all(self):
        """Leave no process behind, whatever the test saw (each launch leads its own process group)."""
        import signal

        for _, submitted in self.submitted:
            if submitted.command_proc.poll() is None:
                os.killpg(submitted.command_proc.pid, signal.SIGKILL)
            submitted.command_proc.wait()


def log_study_screen(models=tuple(study.TABLE1), data_digest="d" * 16, experiment=EXPERIMENT) -> dict[str, str]:
    return {model: fake_run(model, data_digest=data_digest, experiment=experiment,
                            predictions=fake_predictions(len(model))) for model in models}


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- H and the ranking ------------------------------------------------------------------------------
