"""Launching ``train`` runs of the project: jobs, the :class:`Launcher`, progress lines, the project folder.

``select`` and ``paper`` plan :class:`TrainJob` s (a model, seed, stage and resolved config) and
hand them to one :class:`Launcher`, which reuses every job whose run already FINISHED (same stage,
model, seed, config and data digest) and starts the rest through ``mlflow.projects.run`` —
locally or on any backend MLflow projects support — ``parallel`` at a time.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from medfake.core import tracking
from medfake.core.contract import TAG_CONFIG_DIGEST, TAG_DATA_DIGEST, TAG_FAILURE, TAG_MODEL
from medfake.core.errors import UserError
from medfake.study.ranking import use_store

CONFIG_FOLDER = Path(".medfake") / "configs"
POLL_SECONDS = 2.0


class RepeatsFailed(UserError):
    """Some launched runs did not finish; rerunning the step retries only those."""

    exit_code = 1


@dataclass(frozen=True)
class TrainJob:
    """One ``train`` entry-point run to launch (or reuse if an identical one finished)."""

    model: str
    seed: int
    stage: str
    config: str          # config name or file, as the entry point's ``config`` parameter
    overrides: str       # the entry point's ``set`` parameter
    data_digest: str
    config_digest: str   # the digest train will tag: what the reuse check matches
    parent: str = ""

    @property
    def run_name(self) -> str:
        return f"{self.model}-s{self.seed}"

    def parameters(self) -> dict[str, str]:
        return {"model": self.model, "config": self.config, "seed": str(self.seed), "data": self.data_digest,
                "stage": self.stage, "parent": self.parent, "set": self.overrides}

    def finished_run(self, experiment: str):
        """The newest FINISHED run this job would produce (same stage, model, seed, config and data), or None."""
        return tracking.find_finished_run(
            experiment, stage=self.stage, params={"seed": self.seed},
            tags={TAG_MODEL: self.model, TAG_CONFIG_DIGEST: self.config_digest, TAG_DATA_DIGEST: self.data_digest})


def write_config(cfg) -> str:
    """Save a resolved config under ``.medfake/configs/<digest>.yaml`` for launched runs; returns that path."""
    CONFIG_FOLDER.mkdir(parents=True, exist_ok=True)
    path = CONFIG_FOLDER / f"{cfg.digest()}.yaml"
    path.write_text(cfg.to_yaml())
    return path.as_posix()


def launch_train(job: TrainJob, experiment: str, project: str, backend: str = "local", backend_config=None):
    """Start one ``train`` run of the project (asynchronously) and return its ``SubmittedRun``."""
    import mlflow.projects

    return mlflow.projects.run(
        uri=project, entry_point="train", parameters=job.parameters(), experiment_name=experiment,
        env_manager="local", backend=backend, backend_config=backend_config, synchronous=False,
        run_name=job.run_name,
    )


class Progress:
    """One line per event on stderr: step, what, how many left, elapsed time."""

    def __init__(self, step: str, quiet: bool = False):
        self.step = step
        self.quiet = quiet
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        seconds = int(time.monotonic() - self.start)
        clock = f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        print(f"[{self.step} {clock}] {message}", file=sys.stderr, flush=True)


@dataclass
class Launcher:
    """Where and how a driver step's ``train`` runs go: experiment, project folder, MLflow
    projects backend and its config, how many at a time, and the progress lines.

    ``launch`` replaces :func:`launch_train` (one job → an object with ``run_id``,
    ``get_status()``, ``wait()`` and ``cancel()``, as ``SubmittedRun`` has).
    """

    experiment: str
    project: str = "."
    backend: str = "local"
    backend_config: str | dict | None = None
    parallel: int = 1
    launch: Callable[[TrainJob], Any] | None = None
    say: Callable[[str], None] = field(default_factory=lambda: Progress("select"))

    def submit(self, job: TrainJob):
        if self.launch is not None:
            return self.launch(job)
        return launch_train(job, self.experiment, self.project, self.backend, self.backend_config)

    def run_jobs(self, jobs: list[TrainJob], what: str) -> tuple[dict[TrainJob, str], list[str]]:
        """Reuse finished runs, launch the rest ``parallel`` at a time; returns (job → run id, failures).

        Ctrl-C cancels the runs in flight (they end KILLED) and re-raises.
        """
        from mlflow.tracking import MlflowClient

        parallel, say = self.parallel, self.say
        if parallel < 1:
            raise UserError(f"--parallel must be at least 1, got {parallel}")
        done: dict[TrainJob, str] = {}
        pending = []
        for job in jobs:
            found = job.finished_run(self.experiment)
            if found is not None:
                done[job] = found.info.run_id
            else:
                pending.append(job)
        total = len(jobs)
        if done:
            say(f"{what}: reusing {len(done)} of {total} finished run(s): "
                + ", ".join(job.run_name for job in jobs if job in done))
        failures: list[str] = []
        active: dict[TrainJob, Any] = {}
        to_launch, launched = len(pending), 0
        try:
            while pending or active:
                while pending and len(active) < parallel:
                    job = pending.pop(0)
                    submitted = self.submit(job)
                    active[job] = submitted
                    launched += 1
                    say(f"{what} {launched}/{to_launch} {job.run_name}: launched run {submitted.run_id} "
                        f"({len(active)} running, {len(pending)} waiting)")
                finished = [job for job, submitted in active.items()
                            if submitted.get_status() not in ("RUNNING", "SCHEDULED")]
                if not finished:
                    if parallel == 1 and len(active) == 1:
                        next(iter(active.values())).wait()
                    else:
                        time.sleep(POLL_SECONDS)
                    continue
                for job in finished:
                    submitted = active.pop(job)
                    status = MlflowClient().get_run(submitted.run_id).info.status
                    if status == "FINISHED":
                        done[job] = submitted.run_id
                        left = len(pending) + len(active)
                        say(f"{what} {job.run_name}: finished ({len(done)}/{total} done, {left} left)")
                    else:
                        failures.append(f"{job.run_name} ({submitted.run_id}, {status})")
                        say(f"{what} {job.run_name}: ended {status}, see run {submitted.run_id} (tag {TAG_FAILURE})")
        except KeyboardInterrupt:
            for submitted in active.values():
                submitted.cancel()
            raise
        return done, failures


# -- the project folder ------------------------------------------------------------------------
def enter_project(project: str | None) -> str:
    """Make the tracking URI absolute and work in the project folder, as ``mlflow run`` does.

    Launched runs start in the project folder, so relative paths in configs (data, caches) must
    resolve there for the driver too. Default: the current folder if it holds an MLproject, else
    the medfake checkout. The venv's bin folder goes on PATH (launched runs call ``medfake``).
    """
    import mlflow

    uri = use_store()
    for prefix in ("sqlite:///", "file:"):
        if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
            uri = prefix + os.path.abspath(uri[len(prefix):])
    if "://" not in uri and not uri.startswith(("file:", "sqlite:")):
        uri = os.path.abspath(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    bin_dir = os.path.dirname(sys.executable)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    checkout = Path(__file__).resolve().parents[2]  # medfake/study/launcher.py → the checkout
    if project:
        folder = Path(project).resolve()
    else:
        folder = Path.cwd() if (Path.cwd() / "MLproject").is_file() else checkout
    if not (folder / "MLproject").is_file():
        raise UserError(f"no MLproject file in {folder}: run from the medfake project folder or pass --project")
    if folder != Path.cwd().resolve():
        print(f"working in the project folder {folder} (relative config paths resolve there)", file=sys.stderr)
        os.chdir(folder)
    return str(folder)


def parse_backend_config(text: str):
    """``--backend-config``: a JSON file path or a JSON object; empty → None."""
    if not text:
        return None
    if text.endswith(".json"):
        path = Path(text).resolve()
        if not path.is_file():
            raise UserError(f"--backend-config {text}: no such file")
        return str(path)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UserError(f"--backend-config is neither a .json file nor a JSON object ({exc})") from None
    if not isinstance(value, dict):
        raise UserError("--backend-config must be a JSON object")
    return value
