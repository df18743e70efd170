"""Tracking under load and faults: concurrent workers logging metrics to SQLite and to the team server.

N worker processes (default 8) each open their own MLflow run and log S steps (default 100) of M
synthetic metrics (default 60) with ``mlflow.log_metrics(dict, step=…)``, one call per step as
training does, against (a) a local SQLite store and (b) a PostgreSQL-backed ``mlflow server``
started with ``medfake.core.server`` (issue 15: SQLite takes one writer at a time). Then (c) the
same load against the server, whose process group is SIGKILLed half way through and restarted on
the same port and PostgreSQL after ``--outage-s``; the workers rely on MLflow's HTTP retries
(``MLFLOW_HTTP_REQUEST_*``, set explicitly below). Afterwards every metric is read back with
``MlflowClient.get_metric_history``: lost = expected − distinct steps found. The data are
synthetic numbers in a throwaway store. Results go to ``reports/benchmarks/tracking.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import math
import multiprocessing as mp
import os
import platform
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from medfake.bench.tracking_report import Fault, ReadBack, Scenario, render_markdown
from medfake.core import server as team_server
from medfake.core.device import cpu_description
from medfake.core.errors import UserError

METRIC_PREFIX = "synthetic_"
# Enough retries to ride out a killed server: urllib3 waits 0, 2, 4, 8, 16, 32, 64, 120… s between
# tries (factor × 2^(n−1), capped at 120 s) — about 8 minutes in all, far past a restart here.
RETRY_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "10",  # MLflow's own ceiling (_MLFLOW_HTTP_REQUEST_MAX_RETRIES_LIMIT)
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1.0",
}
SCENARIOS = ("sqlite", "server", "fault")
SETUP_TIMEOUT_S = 900.0  # eight processes importing MLflow on two busy cores
RESULT_TIMEOUT_S = 3600.0


def metric_key(j: int) -> str:
    return f"{METRIC_PREFIX}{j:02d}"


def metric_value(worker: int, step: int, j: int) -> float:
    """A value unique to (worker, step, metric), so a read-back can tell a wrong value from a right one."""
    return worker * 1_000_000 + step * 100 + j + 0.5


def count_read_back(histories: dict[int, dict[str, list[tuple[int, float]]]], workers: int, steps: int,
                    metrics: int) -> ReadBack:
    """Compare what the store holds, ``{worker: {key: [(step, value), …]}}``, with what was logged."""
    out = ReadBack(expected=workers * steps * metrics)
    for worker in range(workers):
        per_key = histories.get(worker, {})
        for j in range(metrics):
            seen: set[int] = set()
            for step, value in per_key.get(metric_key(j), []):
                if not 0 <= step < steps or value != metric_value(worker, step, j):
                    out.wrong += 1
                elif step in seen:
                    out.duplicates += 1
                else:
                    seen.add(step)
            out.found += len(seen)
    out.lost = out.expected - out.found
    return out


def error_kind(exc: BaseException) -> str:
    """One short line per kind of failure, so the report can count them."""
    text = str(exc)
    if "database is locked" in text:
        return "database is locked"
    first = (text.strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:120]}"


@dataclass
class WorkerResult:
    index: int
    run_id: str | None = None
    started: list[float] = field(default_factory=list)  # time.monotonic() at each call (system-wide clock)
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    retries_logged: int = 0  # urllib3 "Retrying (...)" warnings seen in this process
    finished_at: float = 0.0


class _RetryCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "Retrying" in record.getMessage()


def _worker(index: int, uri: str, experiment_id: str, steps: int, metrics: int, progress, go, queue) -> None:
    """One training-like process: its own run, one ``log_metrics`` call per step."""
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - MLflow's "View run at" line, eight times over
    os.environ.update(RETRY_ENV)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    retries = _RetryCounter()
    pool_log = logging.getLogger("urllib3.connectionpool")
    pool_log.addHandler(retries)
    pool_log.propagate = False  # counted, not printed eight times over
    result = WorkerResult(index)
    try:
        import mlflow

        mlflow.set_tracking_uri(uri)
        run = mlflow.start_run(experiment_id=experiment_id, run_name=f"worker-{index}")
        result.run_id = run.info.run_id
    except Exception as exc:  # noqa: BLE001 - the report counts it
        result.errors.append(f"start_run: {error_kind(exc)}")
        queue.put(("ready", index))
        result.finished_at = time.monotonic()
        queue.put(("done", result))
        return
    queue.put(("ready", index))
    go.wait()
    for step in range(steps):
        values = {metric_key(j): metric_value(index, step, j) for j in range(metrics)}
        started = time.monotonic()
        try:
            mlflow.log_metrics(values, step=step)
        except Exception as exc:  # noqa: BLE001
            result.errors.append(error_kind(exc))
        result.started.append(started)
        result.latencies_s.append(time.monotonic() - started)
        progress[index] = step + 1
    try:
        mlflow.end_run()
    except Exception as exc:  # noqa: BLE001
        result.errors.append(f"end_run: {error_kind(exc)}")
    result.retries_logged = retries.count
    result.finished_at = time.monotonic()
    queue.put(("done", result))


def _run_workers(uri: str, experiment_id: str, workers: int, steps: int, metrics: int,
                 during: Callable[[Callable[[], int], float], None] | None = None,
                 ) -> tuple[list[WorkerResult], float, float]:
    """Start the workers, release them together, optionally act while they log; (results, go, end)."""
    ctx = mp.get_context("spawn")  # a fresh interpreter each: no MLflow state inherited from this one
    progress = ctx.Array("i", workers, lock=False)
    go, queue = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(i, uri, experiment_id, steps, metrics, progress, go, queue),
                         daemon=True) for i in range(workers)]
    for proc in procs:
        proc.start()
    results: dict[int, WorkerResult] = {}
    try:
        ready = 0
        while ready < workers:
            kind, payload = queue.get(timeout=SETUP_TIMEOUT_S)
            if kind == "ready":
                ready += 1
            else:
                results[payload.index] = payload
        go_at = time.monotonic()
        go.set()
        if during is not None:
            during(lambda: sum(progress), go_at)
        while len(results) < workers:
            kind, payload = queue.get(timeout=RESULT_TIMEOUT_S)
            if kind == "done":
                results[payload.index] = payload
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
    ordered = [results[i] for i in range(workers)]
    return ordered, go_at, max(r.finished_at for r in ordered)


def _read_back(uri: str, results: list[WorkerResult], steps: int, metrics: int) -> tuple[ReadBack, int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    histories: dict[int, dict[str, list[tuple[int, float]]]] = {}
    finished = 0
    for result in results:
        if result.run_id is None:
            continue
        finished += client.get_run(result.run_id).info.status == "FINISHED"
        histories[result.index] = {
            metric_key(j): [(m.step, m.value) for m in client.get_metric_history(result.run_id, metric_key(j))]
            for j in range(metrics)}
    return count_read_back(histories, len(results), steps, metrics), finished


def _experiment(uri: str, name: str) -> str:
    """Created by this process first, so the workers never race to create tables or the experiment."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri).create_experiment(name)


def _summarise(scenario: Scenario, uri: str, results: list[WorkerResult], go_at: float, end_at: float) -> None:
    scenario.wall_s = end_at - go_at
    for result in results:
        scenario.latencies_s.extend(result.latencies_s)
        scenario.errors.update(result.errors)
        scenario.retries_logged += result.retries_logged
    scenario.read_back, scenario.runs_finished = _read_back(uri, results, scenario.steps, scenario.metrics)


def bench_sqlite(folder: Path, workers: int, steps: int, metrics: int) -> Scenario:
    uri = f"sqlite:///{(folder / 'mlflow.db').resolve()}"
    scenario = Scenario("sqlite", f"SQLite {sqlite3.sqlite_version}, local file", workers, steps, metrics)
    experiment_id = _experiment(uri, "bench-tracking-sqlite")
    results, go_at, end_at = _run_workers(uri, experiment_id, workers, steps, metrics)
    _summarise(scenario, uri, results, go_at, end_at)
    return scenario


def _pg_version(postgres: team_server.Postgres) -> str:
    done = subprocess.run([str(postgres.bin_dir / "pg_ctl"), "--version"], capture_output=True, text=True, check=False)
    words = done.stdout.split()  # "pg_ctl (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    return words[2] if done.returncode == 0 and len(words) > 2 else "?"


def bench_server(state: Path, postgres: team_server.Postgres, workers: int, steps: int, metrics: int, *,
                 fault_outage_s: float | None = None, server_workers: int = 2) -> Scenario:
    """Against ``mlflow server`` on the running PostgreSQL; with ``fault_outage_s``, kill and restart it."""
    name = "fault" if fault_outage_s is not None else "server"
    backend = (f"mlflow server ({server_workers} workers) on PostgreSQL {_pg_version(postgres)}, loopback HTTP")
    scenario = Scenario(name, backend, workers, steps, metrics)
    store_uri = postgres.uri(team_server.DEFAULT_DATABASE)
    port = team_server.free_port()
    log = state / f"mlflow-server-{name}.log"

    def start() -> tuple[contextlib.ExitStack, team_server.TrackingServer]:
        stack = contextlib.ExitStack()
        running = stack.enter_context(team_server.tracking_server(
            state, port=port, backend_store_uri=store_uri, workers=server_workers, log_file=log))
        return stack, running

    stacks = []
    try:
        stack, running = start()
        stacks.append(stack)
        uri = running.tracking_uri
        experiment_id = _experiment(uri, f"bench-tracking-{name}")
        during = None
        if fault_outage_s is not None:
            scenario.fault = Fault()

            def during(done_calls: Callable[[], int], go_at: float) -> None:
                while done_calls() < workers * steps // 2:
                    time.sleep(0.05)
                # the whole group: ``mlflow server`` and its uvicorn workers, as when a node dies
                os.killpg(running.process.pid, signal.SIGKILL)
                running.process.wait()
                scenario.fault.killed_at_s = time.monotonic() - go_at
                stacks.pop().close()
                time.sleep(fault_outage_s)
                again, _ = start()
                stacks.append(again)
                scenario.fault.back_at_s = time.monotonic() - go_at

        results, go_at, end_at = _run_workers(uri, experiment_id, workers, steps, metrics, during)
        _summarise(scenario, uri, results, go_at, end_at)
        if scenario.fault is not None:
            f = scenario.fault
            f.outage_s = f.back_at_s - f.killed_at_s
            spanning = [lat for r in results for t, lat in zip(r.started, r.latencies_s)
                        if t - go_at < f.back_at_s and t - go_at + lat > f.killed_at_s]
            f.calls_spanning = len(spanning)
            f.slowest_spanning_s = max(spanning, default=math.nan)
    finally:
        while stacks:
            stacks.pop().close()
    return scenario


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=8, help="concurrent worker processes (default 8)")
    parser.add_argument("--steps", type=int, default=100, help="steps logged per worker (default 100)")
    parser.add_argument("--metrics", type=int, default=60, help="metrics per step (default 60)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, of {', '.join(SCENARIOS)} (default all)")
    parser.add_argument("--outage-s", type=float, default=5.0,
                        help="seconds the killed server stays down before its restart begins (default 5)")
    parser.add_argument("--server-workers", type=int, default=2, help="mlflow server worker processes (default 2, as `medfake server`)")
    parser.add_argument("--report", default="reports/benchmarks/tracking.md", help="markdown report to write")


def run_bench(args: argparse.Namespace) -> int:
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown or not chosen:
        raise UserError(f"--scenarios: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(SCENARIOS)}")
    if min(args.workers, args.steps, args.metrics) < 1 or args.outage_s < 0:
        raise UserError("--workers, --steps and --metrics must be ≥ 1 and --outage-s ≥ 0")
    import mlflow

    load_start = os.getloadavg()
    # under /tmp, world-searchable: as root the cluster runs as the postgres user, which must reach it
    folder = Path(tempfile.mkdtemp(prefix="medfake-bench-tracking-"))
    folder.chmod(0o755)
    scenarios: list[Scenario] = []
    versions = f"Python {platform.python_version()}, MLflow {mlflow.__version__}"
    try:
        if "sqlite" in chosen:
            print("bench tracking: SQLite…", flush=True)
            scenarios.append(bench_sqlite(folder, args.workers, args.steps, args.metrics))
        server_runs = [s for s in ("server", "fault") if s in chosen]
        if server_runs:
            postgres = team_server.init_postgres(folder / "server")
            postgres.start()
            try:
                for name in server_runs:
                    print(f"bench tracking: {name}…", flush=True)
                    scenarios.append(bench_server(
                        folder / "server", postgres, args.workers, args.steps, args.metrics,
                        fault_outage_s=args.outage_s if name == "fault" else None, server_workers=args.server_workers))
            finally:
                postgres.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    load_end = os.getloadavg()
    command = shlex.join(["medfake", "bench", "tracking", "--workers", str(args.workers), "--steps", str(args.steps),
                          "--metrics", str(args.metrics), "--scenarios", ",".join(chosen),
                          "--outage-s", f"{args.outage_s:g}", "--server-workers", str(args.server_workers)])
    text = render_markdown(scenarios, command=command, machine=cpu_description(), load_start=load_start,
                           load_end=load_end, versions=versions, date=dt.date.today().isoformat(),
                           retries=RETRY_ENV)
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)
    print(text)
    print(f"written {report}")
    return 0
