"""The tracking benchmark's figures and report: per-call latency percentiles, the read-back count's
record, and ``reports/benchmarks/tracking.md`` (``medfake.bench.tracking`` runs the scenarios)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class ReadBack:
    expected: int = 0
    found: int = 0  # distinct (run, key, step) with the right value
    lost: int = 0
    duplicates: int = 0  # extra entries for a step already found (a retried write that had landed)
    wrong: int = 0  # entries whose value is not the one logged


@dataclass
class Fault:
    killed_at_s: float = math.nan  # seconds after the workers started logging
    back_at_s: float = math.nan  # /health answered again
    outage_s: float = math.nan
    calls_spanning: int = 0  # calls in flight or started while the server was down
    slowest_spanning_s: float = math.nan


@dataclass
class Scenario:
    name: str
    backend: str
    workers: int
    steps: int
    metrics: int
    wall_s: float = math.nan
    latencies_s: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    retries_logged: int = 0
    runs_finished: int = 0
    read_back: ReadBack = field(default_factory=ReadBack)
    fault: Fault | None = None


def _ms(seconds: float) -> str:
    return "–" if math.isnan(seconds) else f"{seconds * 1000:.0f}"


def render_markdown(scenarios: list[Scenario], *, command: str, machine: str, load_start: tuple[float, ...],
                    load_end: tuple[float, ...], versions: str, date: str, retries: dict[str, str]) -> str:
    def load(values: tuple[float, ...]) -> str:
        return " / ".join(f"{v:.2f}" for v in values)

    lines = [
        "# Tracking under load and faults",
        "",
        "Data: **synthetic metrics** (numbers made up per worker, step and metric) in a throwaway store; "
        "each worker process opens its own MLflow run and calls `mlflow.log_metrics(dict_of_all_metrics, step=…)` "
        "once per step, as training does (one `log-batch` per step).",
        f"Machine: {machine}, shared with other work. Load average (1/5/15 min) at start {load(load_start)}, "
        f"at end {load(load_end)}: timings are one run on a loaded machine, noisy.",
        f"Date: {date}. Command: `{command}`. {versions}.",
        "Client retries (set explicitly for every worker): "
        + ", ".join(f"`{k}={v}`" for k, v in retries.items()) + ".",
        "",
        "| scenario | backend | workers × steps × metrics | wall s | calls | p50 ms | p95 ms | max ms | errors "
        "| urllib3 retries | metrics expected | found | lost | duplicates | wrong | runs FINISHED |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in scenarios:
        rb = s.read_back
        lines.append(
            f"| {s.name} | {s.backend} | {s.workers} × {s.steps} × {s.metrics} | {s.wall_s:.1f} | {len(s.latencies_s)} "
            f"| {_ms(percentile(s.latencies_s, 50))} | {_ms(percentile(s.latencies_s, 95))} "
            f"| {_ms(max(s.latencies_s, default=math.nan))} | {sum(s.errors.values())} | {s.retries_logged} "
            f"| {rb.expected} | {rb.found} | **{rb.lost}** | {rb.duplicates} | {rb.wrong} | {s.runs_finished}/{s.workers} |")
    lines += ["", "Latency is per `log_metrics` call (one step, all metrics), failed calls and time spent in retries included. "
              "Lost = expected − distinct (run, metric, step) read back with `MlflowClient.get_metric_history`; "
              "duplicates = a step stored twice (a retried write that had already landed)."]
    for s in scenarios:
        if s.errors:
            lines += ["", f"Errors in `{s.name}`:", ""]
            lines += [f"- {count} × {kind}" for kind, count in s.errors.most_common()]
    for s in scenarios:
        if s.fault is None:
            continue
        f, rb = s.fault, s.read_back
        lines += [
            "", f"## Server killed mid-run (`{s.name}`)", "",
            f"When half of all calls were done ({f.killed_at_s:.1f} s after logging began) the `mlflow server` "
            "process group (the CLI and its uvicorn workers) got SIGKILL; PostgreSQL kept running. "
            f"After the planned pause the server was started again on the same port and database; it answered "
            f"`/health` at {f.back_at_s:.1f} s, so the server was down {f.outage_s:.1f} s (pause + restart).",
            "",
            f"What the workers did: {f.calls_spanning} `log_metrics` calls were in flight or started during the "
            f"outage; they blocked in MLflow's HTTP retries (urllib3 logged {s.retries_logged} retries) and the "
            f"slowest returned after {f.slowest_spanning_s:.1f} s. Errors raised to the workers: "
            f"{sum(s.errors.values())}. Metrics lost: **{rb.lost}** of {rb.expected}"
            f"{' (goal 0: met)' if rb.lost == 0 else ' (goal 0: NOT met)'}; duplicates {rb.duplicates}; "
            f"runs FINISHED {s.runs_finished}/{s.workers}.",
        ]
    return "\n".join(lines) + "\n"
