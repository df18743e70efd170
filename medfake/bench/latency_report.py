"""The latency benchmark's rows and report: the markdown table, its plain checks, and the MLflow run.

The rows are measured by :mod:`medfake.bench.latency`; this module only writes them down.
"""

from __future__ import annotations

import datetime as dt
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

EXPERIMENT = "medfake-benchmarks"
HU_RANGE = (-1000.0, 400.0)


@dataclass
class LatencyRow:
    """One measured row of the table."""

    model: str
    runtime: str  # e.g. "keras-float32 (baseline)", "openvino-bfloat16"
    params_m: float
    mean_ms: float
    std_ms: float
    min_ms: float  # fastest step: the least disturbed by other work on shared cores
    images_per_s: float
    speedup: float  # baseline mean / this mean
    max_abs_delta: float  # max |p - p_baseline| over the batch
    paper_ms: tuple[float, float]


def software_versions() -> str:
    from importlib import metadata

    parts = []
    for package in ("keras", "tensorflow", "jax", "onnxruntime", "openvino"):
        try:
            parts.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{package} (not installed)")
    return ", ".join(parts)


def fmt_ms(mean: float, std: float) -> str:
    return f"{mean:,.1f} ± {std:,.1f}"


def render_markdown(
    rows: Sequence[LatencyRow],
    settings: dict,
    device: str,
    device_text: str,
    command: str,
    models_asked: Sequence[str],
    finished: bool,
    load_averages: Sequence[float] = (),
    failures: Mapping[str, str] | None = None,
    row_failures: Sequence[str] = (),
) -> str:
    """The benchmark report: settings, full table, a best-runtime summary and the study's T4 numbers."""
    measured = list(dict.fromkeys(r.model for r in rows))
    failures = dict(failures or {})
    pending = [m for m in models_asked if m not in measured and m not in failures]
    lines = [
        f"# Inference latency — {device}",
        "",
        f"- Command: `{command}`",
        f"- Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Device: {device_text}",
        f"- Software: {software_versions()}, Python {platform.python_version()}",
        f"- Input: one batch of {settings['batch']} random chest-like {settings['size']}² slices in HU"
        f" ({HU_RANGE[0]:.0f}..{HU_RANGE[1]:.0f}); weights {settings['weights']}; {settings['warmup']} warm-up +"
        f" {settings['steps']} timed steps (the study's Table 3 method); Keras jit_compile"
        f" {'on' if settings['jit'] else 'off'}",
        *([f"- Load: 1-minute load average {min(load_averages):.1f}–{max(load_averages):.1f} while measuring"
           " (above the core count means other work competed for the cores)"] if load_averages else []),
        f"- Models measured: {', '.join(measured) or 'none'}"
        + (f"; not measured{' yet' if not finished else ''}: {', '.join(pending)}" if pending else "")
        + "".join(f"; failed: {model} ({reason})" for model, reason in failures.items()),
        "",
        "Speed-up (ratio of means) and max |Δp| are against the Keras float32 `predict_on_batch` baseline"
        " measured in the same run on the same batch; \"min ms\" is the fastest of the timed steps, the figure"
        " least disturbed by other work. The study's numbers are one inference step on a Tesla T4 GPU; ours are"
        + (" CPU numbers, shown beside them for scale, not for equality." if device == "cpu" else
           f" {device_text.split(',')[0]} numbers, a newer GPU than the T4: beside them for scale, not for equality."),
        "",
        "Probabilities are only comparable if they differ between images: with random weights (`--weights none`)"
        " BatchNorm statistics are first set from another random batch and the output layer is scaled so the"
        " batch's logits have std 2 (`calibrate_random_detector`). Random deep networks amplify rounding"
        " error far more than trained ones and the head is as sensitive as the batch allows, so the |Δp| of"
        " bfloat16 rows is a pessimistic stress figure, not what a trained detector shows; checking"
        " reduced precision against the 0.01 target needs real weights (`--weights imagenet` with the files"
        " in the Keras cache, or a trained detector). float32 rows must stay within 1e-4 either way.",
        "",
        "**Noise:** this machine is shared (other people's tests run on the same cores), so single timings"
        " can be off by tens of percent; compare rows of the same model, measured back to back.",
        "",
        "## All rows",
        "",
        "| model | runtime | params (M) | ms / step (mean ± std) | min ms | images/s | speed-up | max abs Δp"
        " | study T4 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.runtime} | {r.params_m:.2f} | {fmt_ms(r.mean_ms, r.std_ms)} | {r.min_ms:,.1f}"
            f" | {r.images_per_s:.1f}"
            f" | {r.speedup:.2f}× | {r.max_abs_delta:.2e} | {fmt_ms(*r.paper_ms)} |"
        )
    lines += ["", "## Fastest runtime per model", "",
              "Fastest of all rows, and fastest float32 row (the one to use where probabilities must equal"
              " Keras's).", "",
              "| model | Keras f32 ms | fastest | ms / step | speed-up | max abs Δp | fastest float32 | ms / step"
              " | speed-up | max abs Δp | study T4 ms |",
              "| --- | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for model in measured:
        model_rows = [r for r in rows if r.model == model]
        best = min(model_rows, key=lambda r: r.mean_ms)
        exact = min((r for r in model_rows if "float32" in r.runtime), key=lambda r: r.mean_ms)
        lines.append(
            f"| {model} | {model_rows[0].mean_ms:,.1f} | {best.runtime} | {fmt_ms(best.mean_ms, best.std_ms)}"
            f" | {best.speedup:.2f}× | {best.max_abs_delta:.2e} | {exact.runtime} | {fmt_ms(exact.mean_ms, exact.std_ms)}"
            f" | {exact.speedup:.2f}× | {exact.max_abs_delta:.2e} | {fmt_ms(*best.paper_ms)} |"
        )
    if row_failures:
        lines += ["", "## Runtimes that could not run a backbone", ""] + [f"- {line}" for line in row_failures]
    lines += ["", "## Checks", ""] + _checks(rows, measured)
    lines.append("")
    return "\n".join(lines)


def _checks(rows: Sequence[LatencyRow], measured: Sequence[str]) -> list[str]:
    """Plain statements of the targets: ≥ 2× faster than Keras float32, float32 rows within 1e-4."""
    def models_where(test) -> list[str]:
        return [m for m in measured if test([r for r in rows if r.model == m][1:])]

    fast = models_where(lambda others: any(r.speedup >= 2.0 for r in others))
    fast_exact = models_where(lambda others: any(r.speedup >= 2.0 and "float32" in r.runtime for r in others))
    exact_rows = [r for r in rows if "float32" in r.runtime and "baseline" not in r.runtime]
    inexact = [f"{r.model} {r.runtime} ({r.max_abs_delta:.1e})" for r in exact_rows if r.max_abs_delta > 1e-4]

    def listing(names: list[str]) -> str:
        missing = [m for m in measured if m not in names]
        return f"{len(names)} of {len(measured)}" + (f" (not: {', '.join(missing)})" if missing else "")

    return [
        f"- A runtime ≥ 2× faster than Keras float32: {listing(fast)}.",
        f"- A float32 runtime ≥ 2× faster than Keras float32: {listing(fast_exact)}.",
        f"- float32 rows within 1e-4 of Keras float32: {len(exact_rows) - len(inexact)} of {len(exact_rows)}"
        + (f" (not: {', '.join(inexact)})" if inexact else "") + ".",
    ]


def log_to_mlflow(rows: Sequence[LatencyRow], settings: dict, device: str, report_path: Path) -> str:
    """One MLflow run in "medfake-benchmarks": settings as params, a metric per model/runtime, the report."""
    import mlflow

    from medfake.core import tracking

    run_name = f"latency-{device}-{settings['size']}px-b{settings['batch']}"
    with tracking.run(EXPERIMENT, run_name, stage="bench", tags={tracking.TAG_DEVICE: device, "medfake.bench": "latency"}) as active:
        tracking.log_params({key: value for key, value in settings.items()})
        for r in rows:
            key = f"{r.model.lower()}/{r.runtime.split(' ')[0]}"
            mlflow.log_metrics({
                f"latency_ms/{key}": r.mean_ms,
                f"latency_std_ms/{key}": r.std_ms,
                f"latency_min_ms/{key}": r.min_ms,
                f"images_per_s/{key}": r.images_per_s,
                f"speedup/{key}": r.speedup,
                f"max_abs_delta/{key}": r.max_abs_delta,
            })
        mlflow.log_artifact(str(report_path))
        return active.info.run_id
