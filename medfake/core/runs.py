"""List RUNNING runs whose process is gone or whose heartbeat is stale; ``--end`` ends them FAILED.

A step killed with SIGKILL, out of memory or on a lost node cannot end its own run, which then
stays RUNNING forever. Every run ``medfake`` starts carries ``medfake.process`` (host:pid) and a
``medfake.heartbeat`` tag rewritten every 30 s while it lives (core/tracking.py); a run is stale
when its process on this host is gone, or its heartbeat is older than ``--max-age``.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from dataclasses import dataclass

from medfake.core import tracking
from medfake.core.contract import TAG_FAILURE, TAG_HEARTBEAT, TAG_PROCESS, TAG_STAGE
from medfake.core.errors import UserError

DEFAULT_MAX_AGE_S = 180.0  # six missed heartbeats


@dataclass
class RunningRun:
    run_id: str
    experiment: str
    name: str
    stage: str
    heartbeat_age_s: float | None  # None: the run has no heartbeat tag (started before heartbeats)
    stale_reason: str | None


def _process_gone(process: str) -> bool:
    """True only when the run's process was on this host and is not alive (a zombie counts as gone)."""
    host, _, pid_text = process.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        with open(f"/proc/{pid_text}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def stale_reason(tags: dict[str, str], start_time_ms: int, max_age_s: float, now: float) -> str | None:
    """Why a RUNNING run is taken for dead, or None while it looks alive."""
    process = tags.get(TAG_PROCESS, "")
    if process and _process_gone(process):
        return f"process {process} is gone (killed or crashed without ending its run)"
    beat = tags.get(TAG_HEARTBEAT)
    last = float(beat) if beat and beat.isdigit() else start_time_ms / 1000.0
    age = now - last
    if age > max_age_s:
        what = "no heartbeat" if beat else "no heartbeat tag since its start"
        return f"{what} for {age:.0f} s (over {max_age_s:.0f} s)"
    return None


def running_runs(experiment: str | None, max_age_s: float = DEFAULT_MAX_AGE_S) -> list[RunningRun]:
    """Every RUNNING run of ``experiment`` (all experiments when None), with why it is stale if it is."""
    from mlflow.tracking import MlflowClient

    tracking.use_store()
    client = MlflowClient()
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise UserError(f"--experiment {experiment}: no such experiment in {tracking.tracking_uri()}")
        experiments = [exp]
    else:
        experiments = client.search_experiments()
    names = {e.experiment_id: e.name for e in experiments}
    if not names:
        return []
    now = time.time()
    out = []
    for run in client.search_runs(list(names), filter_string="attributes.status = 'RUNNING'", max_results=5000):
        tags = run.data.tags
        beat = tags.get(TAG_HEARTBEAT)
        out.append(RunningRun(run.info.run_id, names[run.info.experiment_id], run.info.run_name or "",
                              tags.get(TAG_STAGE, ""), now - float(beat) if beat and beat.isdigit() else None,
                              stale_reason(tags, run.info.start_time, max_age_s, now)))
    return out


def end_stale(runs: list[RunningRun]) -> int:
    """End each stale run FAILED with its reason in ``medfake.failure``; how many were ended."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    ended = 0
    for run in runs:
        if run.stale_reason:
            client.set_tag(run.run_id, TAG_FAILURE, f"ended by `medfake runs --stale --end`: {run.stale_reason}")
            client.set_terminated(run.run_id, "FAILED")
            ended += 1
    return ended


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", default="", help="only this experiment (default: every experiment)")
    parser.add_argument("--stale", action="store_true", help="only runs taken for dead (process gone, heartbeat stale)")
    parser.add_argument("--end", action="store_true", help="with --stale: end them FAILED, the reason in medfake.failure")
    parser.add_argument("--max-age", type=float, default=DEFAULT_MAX_AGE_S,
                        help=f"seconds without a heartbeat before a run is stale (default {DEFAULT_MAX_AGE_S:.0f})")


def run(args: argparse.Namespace) -> int:
    if args.end and not args.stale:
        raise UserError("--end needs --stale (only runs taken for dead are ended)")
    if args.max_age <= 0:
        raise UserError(f"--max-age must be positive, got {args.max_age}")
    runs = running_runs(args.experiment.strip() or None, args.max_age)
    shown = [r for r in runs if r.stale_reason] if args.stale else runs
    if not shown:
        print("no stale RUNNING runs" if args.stale else "no RUNNING runs")
        return 0
    for r in shown:
        age = "-" if r.heartbeat_age_s is None else f"{r.heartbeat_age_s:.0f}s"
        print(f"{r.run_id}  {r.experiment}  {r.name}  stage={r.stage or '-'}  heartbeat={age}  "
              f"{'STALE: ' + r.stale_reason if r.stale_reason else 'alive'}")
    if args.end:
        print(f"ended {end_stale(shown)} run(s) FAILED")
    return 0
