"""Launching ``train`` runs of the project: jobs, the :class:`Launcher`, progress lines, the project folder.

``select`` and ``paper`` plan :class:`TrainJob` s (a model, seed, stage and resolved config) and
hand them to one :class:`Launcher`, which reuses every job whose run already FINISHED (same stage,
model, seed, config and data digest) and starts the rest through ``mlflow.projects.run`` —
locally or on any backend MLflow projects support — ``parallel`` at a time.

While it waits it watches each launched run (issue 15): a run whose process died without ending
it (SIGKILL, out of memory, a lost node) or whose heartbeat went stale is ended FAILED with the
reason in ``medfake.failure`` and its job launched once more; a run that failed by itself (an
exception, which ``medfake.failure`` already explains) would fail the same way and is not.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from medfake.core import tracking
from medfake.core.contract import TAG_CONFIG_DIGEST, TAG_DATA_DIGEST, TAG_FAILURE, TAG_HEARTBEAT, TAG_MODEL, TAG_PROCESS
from medfake.core.errors import UserError
from medfake.core.runs import DEFAULT_MAX_AGE_S, stale_reason
from medfake.study.ranking import use_store

CONFIG_FOLDER = Path(".medfake") / "configs"
POLL_SECONDS = 2.0
ATTEMPTS = 2  # a job whose process dies is launched once more; a second death is a failure


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
    ``get_status()``, ``wait()`` and ``cancel()``, as ``SubmittedRun`` has). ``stale_after_s``:
    seconds without a heartbeat before a launched run is taken for dead; ``poll_s``: how often
    the launched runs are looked at.
    """

    experiment: str
    project: str = "."
    backend: str = "local"
    backend_config: str | dict | None = None
    parallel: int = 1
    launch: Callable[[TrainJob], Any] | None = None
    say: Callable[[str], None] = field(default_factory=lambda: Progress("select"))
    stale_after_s: float = DEFAULT_MAX_AGE_S
    poll_s: float = POLL_SECONDS

    def submit(self, job: TrainJob):
        if self.launch is not None:
            return self.launch(job)
        return launch_train(job, self.experiment, self.project, self.backend, self.backend_config)

    def run_jobs(self, jobs: list[TrainJob], what: str) -> tuple[dict[TrainJob, str], list[str]]:
        """Reuse finished runs, launch the rest ``parallel`` at a time; returns (job → run id, failures).

        A run whose process died or whose heartbeat went stale is ended FAILED and its job launched
        again, once (:meth:`_watch`). Ctrl-C cancels the runs in flight (they end KILLED) and re-raises.
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
        attempts: dict[TrainJob, int] = {}
        replaces: dict[TrainJob, tuple[str, str]] = {}  # job → (the dead run, why it died)
        to_launch, launched = len(pending), 0
        # Heartbeat ages are only judged once the store has answered for stale_after_s without a break: a
        # store that was down (a restarted tracking server) held every run's heartbeat back.
        store_ok_since, store_down = time.monotonic(), False
        try:
            while pending or active:
                while pending and len(active) < parallel:
                    job = pending.pop(0)
                    submitted = self.submit(job)
                    active[job] = submitted
                    attempts[job] = attempts.get(job, 0) + 1
                    launched += 1
                    say(f"{what} {launched}/{to_launch} {job.run_name}: launched run {submitted.run_id} "
                        f"({len(active)} running, {len(pending)} waiting)")
                    if job in replaces:
                        dead, why = replaces.pop(job)
                        MlflowClient().set_tag(dead, TAG_FAILURE, f"{why}; relaunched as run {submitted.run_id}"[:4000])
                judge_age = time.monotonic() - store_ok_since >= self.stale_after_s
                finished, died, answered = [], [], True
                for job, submitted in active.items():
                    try:
                        ended, why = self._watch(submitted, judge_age)
                    except Exception as exc:  # noqa: BLE001 - the store did not answer; look again next poll
                        if not store_down:
                            say(f"{what}: the tracking store did not answer ({type(exc).__name__}); waiting for it")
                        store_ok_since, store_down, answered = time.monotonic(), True, False
                        continue
                    if why:
                        died.append((job, why))
                    elif ended:
                        finished.append(job)
                store_down = store_down and not answered
                for job, why in died:
                    submitted = active.pop(job)
                    _stop(submitted)
                    again = attempts[job] < ATTEMPTS
                    note = "relaunching" if again else f"died {attempts[job]} times, not relaunched"
                    MlflowClient().set_tag(submitted.run_id, TAG_FAILURE, f"{why}; {note}"[:4000])
                    MlflowClient().set_terminated(submitted.run_id, "FAILED")
                    if again:
                        pending.insert(0, job)
                        replaces[job] = (submitted.run_id, why)
                        to_launch += 1
                        say(f"{what} {job.run_name}: run {submitted.run_id} {why}; ended it FAILED, launching it again")
                    else:
                        failures.append(f"{job.run_name} ({submitted.run_id}, FAILED: {why})")
                        say(f"{what} {job.run_name}: run {submitted.run_id} {why}; ended it FAILED, "
                            f"died {attempts[job]} times (tag {TAG_FAILURE})")
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
                if active and not finished and not died:
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            for submitted in active.values():
                submitted.cancel()
            raise
        return done, failures

    def _watch(self, submitted, judge_age: bool) -> tuple[bool, str]:
        """(whether the launched process ended, why its run is taken for dead — "" while it is not).

        Under the local backend the launched process is ``mlflow run``, which runs the train step
        as its child: if the train step is killed, ``mlflow run`` ends the run FAILED without
        ``medfake.failure`` (the step had no chance to say why) and exits 1; if ``mlflow run``
        itself is killed, its ``get_status()`` says FAILED (the exit code is negative) while the
        run stays RUNNING. A step that failed by itself always sets ``medfake.failure``.
        """
        from mlflow.tracking import MlflowClient

        if submitted.get_status() in ("RUNNING", "SCHEDULED"):
            if not judge_age:
                return False, ""
            run = MlflowClient().get_run(submitted.run_id)
            # No heartbeat yet: the step has not started (a pod waiting for a node, a slow import).
            if run.info.status != "RUNNING" or TAG_HEARTBEAT not in run.data.tags:
                return False, ""
            why = stale_reason(run.data.tags, run.info.start_time, self.stale_after_s, time.time())
            return False, why or ""
        run = MlflowClient().get_run(submitted.run_id)
        tags = run.data.tags
        if run.info.status == "RUNNING":
            return True, f"process gone ({_exit_text(submitted)}) while RUNNING"
        if run.info.status == "FAILED" and TAG_PROCESS in tags and TAG_FAILURE not in tags:
            return True, (f"process {tags[TAG_PROCESS]} died without ending its run "
                          f"(launcher {_exit_text(submitted)}, no {TAG_FAILURE} from the step)")
        return True, ""


def _exit_text(submitted) -> str:
    process = getattr(submitted, "command_proc", None)  # LocalSubmittedRun's Popen
    code = process.poll() if process is not None else None
    return "exit status unknown" if code is None else f"exit {code}"


def _stop(submitted) -> None:
    """Make sure nothing of a dead or stale launched run still runs (no second writer to its run).

    A local launch is the leader of its own process group (MLflow starts ``mlflow run`` with
    setsid): SIGKILL to the group also reaches a train step left behind by a killed ``mlflow run``.
    Other backends cancel their job.
    """
    process = getattr(submitted, "command_proc", None)
    if process is None:
        submitted.cancel()
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if process.poll() is None:
        process.kill()
    process.wait()


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
