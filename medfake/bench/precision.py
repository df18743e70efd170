"""Reduced precision on trained detectors: each backbone's max |Δp| per runtime (issue 17, goal 4).

Random weights exaggerate rounding (reports/benchmarks/latency-cpu.md), so this trains one small
detector per backbone with the real ``train`` step on the quickstart's phantom data (96², phase 2
only, a couple of epochs: enough to move the weights off their initialisation, not a good
detector), and reads what that step logs: ``max_abs_dp/<runtime>-<precision>`` against Keras
float32 on the detector's test slices. ``--run`` adds finished train runs (e.g. the quickstart's)
to the table. scan's default precision allows bfloat16 for a detector only where its own figure is
≤ 0.01; the table says for how many backbones that held here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shlex
import sys

from medfake.bench import model_names, write_report
from medfake.core.contract import REDUCED_PRECISION_TOLERANCE, RUNTIME_DELTA_PREFIX, TAG_MODEL

EXPERIMENT = "medfake-bench-precision"
RUNTIMES = ("keras-bfloat16", "openvino-float32", "openvino-bfloat16", "onnx-float32")


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="all", help="comma list of backbones, all (default), or none (only --run)")
    parser.add_argument("--epochs", type=int, default=2, help="phase-2 epochs per detector (default 2)")
    parser.add_argument("--run", action="append", default=[], metavar="RUN_ID",
                        help="also list this finished train run (repeatable), e.g. the quickstart's")
    parser.add_argument("--experiment", default=EXPERIMENT, help=f"MLflow experiment of the trained detectors (default {EXPERIMENT})")
    parser.add_argument("--report", default="reports/benchmarks/precision-cpu.md", help="markdown report to write")


def _train_each(models: list[str], epochs: int, experiment: str) -> tuple[list[str], dict[str, str]]:
    from medfake.core.config import load_config
    from medfake.training.train import resolve_plan, train

    overrides = [f"experiment={experiment}", "train.phase1_epochs=0", f"train.phase2_epochs={epochs}",
                 "eval.explain=false", "eval.bootstrap_samples=100"]
    runs, failures = [], {}
    for name in models:
        print(f"training {name} ({epochs} phase-2 epochs) …", file=sys.stderr, flush=True)
        try:
            runs.append(train(resolve_plan(name, load_config("quickstart", overrides), "screen"), progress=False))
        except Exception as exc:  # noqa: BLE001 - one backbone failing must not lose the others' rows
            failures[name] = " ".join(str(exc).split())[:200] or type(exc).__name__
    return runs, failures


def _row(run) -> list[str]:
    metrics = run.data.metrics
    cells = [f"{metrics[RUNTIME_DELTA_PREFIX + r]:.1e}" if RUNTIME_DELTA_PREFIX + r in metrics else "–" for r in RUNTIMES]
    bf16 = metrics.get(RUNTIME_DELTA_PREFIX + "openvino-bfloat16")
    allowed = "–" if bf16 is None else ("bfloat16" if bf16 <= REDUCED_PRECISION_TOLERANCE else "float32")
    size = run.data.params.get("data.image_size", "?")
    return [run.data.tags.get(TAG_MODEL, "?"), f"`{run.info.run_id[:8]}`", f"{size}²",
            run.data.params.get("precision_used", "?"), f"{metrics.get('test_auc', float('nan')):.3f}", *cells, allowed]


def run_bench(args: argparse.Namespace) -> int:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from medfake.core import tracking
    from medfake.core.device import cpu_description
    from medfake.core.errors import UserError

    if args.epochs < 1:
        raise UserError("--epochs must be ≥ 1")
    if args.models == "none" and not args.run:
        raise UserError("--models none lists only --run runs: give at least one --run RUN_ID")
    names = model_names(args.models)
    tracking.setup(args.experiment)
    started = dt.datetime.now(dt.timezone.utc)
    runs, failures = _train_each(names, args.epochs, args.experiment)
    client = MlflowClient()
    rows = []
    for run_id in [*args.run, *runs]:
        try:
            rows.append(_row(client.get_run(run_id)))
        except MlflowException:
            raise UserError(f"--run {run_id}: no such MLflow run in {mlflow.get_tracking_uri()}") from None
    header = ["detector", "run", "input", "trained in", "test AUC", *(f"max abs Δp {r}" for r in RUNTIMES),
              "scan's default precision"]
    bf16 = [r for r in rows if r[-1] != "–"]
    within = [r for r in bf16 if r[-1] == "bfloat16"]
    lines = [
        "# Reduced precision on trained detectors (CPU)", "",
        f"- Command: `medfake bench {' '.join(shlex.quote(a) for a in sys.argv[2:])}`",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')}; machine: {cpu_description()}; Python {platform.python_version()}",
        "- Data: **synthetic CT phantom** (the quickstart's data at 96²); each detector's figures are over its own test"
        " slices, against its Keras float32 scores (logged by the train step, `max_abs_dp/*`).",
        f"- Detectors: one per backbone, `train` with phase 1 off and {args.epochs} phase-2 epochs from random weights"
        " (small, barely trained: the weights have moved, the detectors are not good), plus any `--run`.", "",
        "| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows), "",
        f"**OpenVINO bfloat16 within {REDUCED_PRECISION_TOLERANCE} of Keras float32 for {len(within)} of {len(bf16)}"
        " detectors** (those scan runs in bfloat16 by default; the others stay float32). float32 runtimes should"
        " stay within 1e-4.",
    ]
    lines += [f"- {name}: training failed ({reason})" for name, reason in failures.items()]
    write_report(args.report, lines + [""])
    return 0
