"""Inference latency per backbone and runtime, the study's Table 3 method on this machine.

For each backbone: build the detector, time ``warmup`` untimed then ``steps`` timed inference
steps on one batch of random chest-like slices in HU (-1000..400), and report mean ± std ms per
step. Every runtime row is measured in the same run as the Keras float32 ``predict_on_batch``
baseline on the same batch, so each row has a speed-up and the max |Δ probability| against it.
Weights do not change latency, so random weights (``--weights none``) are the default; the random
detector is calibrated first so that its probabilities differ between images (see
``calibrate_random_detector``).
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import shlex
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfake.bench import model_names
from medfake.bench.latency_report import EXPERIMENT, HU_RANGE, LatencyRow, fmt_ms, log_to_mlflow, render_markdown
from medfake.core.device import device_label, interleaved_step_times_ms
from medfake.core.errors import UserError

RUNTIME_CHOICES = ("keras", "onnx", "openvino")
PRECISION_CHOICES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class RowSpec:
    """One runtime row to measure: a runtime and the precision asked of it."""

    runtime: str
    precision: str


def random_ct_batch(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """(batch, size, size, 1) float32 random chest-like slices in HU, clipped to -1000..400.

    Air around an elliptic soft-tissue body with two lungs of random size, position and density,
    plus noise of random level: images differ from each other as real slices do (plain uniform noise
    gives every image the same pooled features, so probabilities could not be compared).
    """
    rng = np.random.default_rng(seed)
    rows, cols = (np.mgrid[0:size, 0:size] + 0.5) / size - 0.5
    out = np.empty((batch, size, size, 1), np.float32)
    for index in range(batch):
        image = np.full((size, size), HU_RANGE[0])
        half_width, half_height = rng.uniform(0.30, 0.48, 2)
        body = (cols / half_width) ** 2 + (rows / half_height) ** 2 <= 1.0
        image[body] = rng.uniform(-50.0, 80.0)
        for side in (-1.0, 1.0):
            col0, row0 = side * rng.uniform(0.10, 0.20), rng.uniform(-0.10, 0.10)
            lung_width, lung_height = rng.uniform(0.06, 0.15), rng.uniform(0.12, 0.30)
            lung = ((cols - col0) / lung_width) ** 2 + ((rows - row0) / lung_height) ** 2 <= 1.0
            image[lung & body] = rng.uniform(-900.0, -750.0)
        image += rng.normal(0.0, rng.uniform(10.0, 60.0), image.shape)
        out[index, ..., 0] = np.clip(image, *HU_RANGE)
    return out


CALIBRATION_SLICES = 2  # slices per training-mode pass of calibrate_random_detector


def calibrate_random_detector(model, batch: np.ndarray, calibration_batch: np.ndarray | None = None,
                              logit_std: float = 2.0) -> None:
    """Make a random-weight detector's probabilities differ between images (in place).

    With random weights BatchNorm's unit statistics leave some backbones' features at ~1e-11 and
    every probability at 0.5, so |Δp| between runtimes would be 0 whatever their precision. With
    ``calibration_batch``, BatchNorm statistics are set from it (training-mode passes of a few slices,
    averaged); then the output layer is rescaled so the logits of ``batch`` have mean 0 and std ``logit_std``
    (probabilities spread over ~0.1–0.9, as a trained detector's are). A pessimistic setting for
    reduced precision: random deep networks amplify rounding error more than trained ones, and the
    head is as sensitive to small feature differences between images as the batch allows.
    """
    from medfake.models.detector import OUTPUT_NAME, embedding_model, recalibrate_batchnorm

    if calibration_batch is not None:
        # A few slices per pass: one eager training-mode pass of 8 slices at 512² held 11 GB
        # (EfficientNetB4, reports/benchmarks/memory_probe.py).
        recalibrate_batchnorm(model, (calibration_batch[first:first + CALIBRATION_SLICES]
                                      for first in range(0, len(calibration_batch), CALIBRATION_SLICES)))
    embedding = np.asarray(embedding_model(model).predict_on_batch(batch), dtype=np.float64)
    output = model.get_layer(OUTPUT_NAME)
    kernel, bias = output.get_weights()
    logits = embedding @ kernel + bias
    spread = float(logits.std())
    if spread > 0:
        gain = logit_std / spread
        output.set_weights([kernel * gain, (bias - logits.mean()) * gain])


def parse_rows(runtime: str, precision: str = "auto") -> list[RowSpec]:
    """Parse ``--runtime``: "all" or a comma list of ``runtime[:precision]`` (precision default ``precision``).

    ONNX Runtime runs float32 only: a global ``--precision`` other than float32 gives it a float32 row;
    an explicit ``onnx:bfloat16`` is an error.
    """
    if precision not in PRECISION_CHOICES:
        raise UserError(f"--precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
    items = [item.strip().lower() for item in runtime.split(",") if item.strip()]
    if items == ["all"]:
        items = list(RUNTIME_CHOICES)
    rows: list[RowSpec] = []
    for item in items:
        name, _, asked = item.partition(":")
        if name not in RUNTIME_CHOICES:
            raise UserError(f"--runtime: unknown runtime {name!r} (choose from {', '.join(RUNTIME_CHOICES)} or all)")
        if asked and asked not in PRECISION_CHOICES:
            raise UserError(f"--runtime {item}: precision must be one of {', '.join(PRECISION_CHOICES)}")
        row_precision = asked or precision
        if name == "onnx" and row_precision not in ("auto", "float32"):
            if asked:
                raise UserError(f"--runtime {item}: the onnx runtime runs float32 only")
            row_precision = "float32"
        spec = RowSpec(name, row_precision)
        if spec not in rows:
            rows.append(spec)
    if not rows:
        raise UserError("--runtime names no runtime")
    return rows


def _is_baseline(spec: RowSpec, jit: bool) -> bool:
    return spec.runtime == "keras" and spec.precision in ("auto", "float32") and not jit


def benchmark_backbone(
    name: str,
    size: int,
    batch_size: int,
    rows: Sequence[RowSpec],
    steps: int = 10,
    warmup: int = 2,
    weights: str = "none",
    jit: bool = False,
    window: tuple[float, float] = (-600.0, 1500.0),
) -> tuple[list[LatencyRow], list[str]]:
    """Measure the Keras float32 baseline and every row of ``rows`` for one backbone, taking turns.

    Every runtime is loaded first, then all are timed in turn (``interleaved_step_times_ms``).
    Returns the rows and, for runtimes that could not export or load this backbone, one line each
    saying why (e.g. ONNX for grouped convolutions); the others are still measured.
    """
    import keras

    from medfake.models.registry import get_backbone
    from medfake.models.detector import build_detector, count_params_m
    from medfake.models.runtime import export_detector, load_runtime
    from medfake.models.weights import resolve_weights

    backbone = get_backbone(name)
    weights_value, _ = resolve_weights(backbone, weights)
    model = build_detector(backbone, size, weights=weights_value, window=window)
    params_m = count_params_m(model)
    batch = random_ct_batch(batch_size, size, seed=0)
    calibrate_random_detector(model, batch, random_ct_batch(batch_size, size, seed=1) if weights_value is None else None)
    paper = tuple(backbone.paper_latency_ms)

    def baseline_predict(x):
        return model.predict_on_batch(x)

    export_root = Path(tempfile.mkdtemp(prefix="medfake-latency-"))
    try:
        unavailable: dict[str, str] = {}
        exported = {}
        for fmt in [r for r in ("onnx", "openvino") if any(spec.runtime == r for spec in rows)]:
            try:
                exported.update(export_detector(model, export_root, formats=(fmt,)))
            except Exception as exc:  # noqa: BLE001 — reported in the table, the other runtimes go on
                unavailable[fmt] = f"{fmt}: export failed: {_first_line(exc)}"
        contenders: list[tuple[str, Callable]] = [("keras-float32 (baseline)", baseline_predict)]
        for spec in rows:
            if _is_baseline(spec, jit) or spec.runtime in unavailable:
                continue
            source = model if spec.runtime == "keras" else exported[spec.runtime]
            try:
                runtime = load_runtime(source, spec.runtime, spec.precision,
                                       jit_compile=jit and spec.runtime == "keras")
            except Exception as exc:  # noqa: BLE001 — reported in the table, the other runtimes go on
                unavailable[f"{spec.runtime}:{spec.precision}"] = f"{spec.runtime} {spec.precision}: {_first_line(exc)}"
                continue
            contenders.append((runtime.name, runtime.predict))
        times_ms = interleaved_step_times_ms([predict for _, predict in contenders], batch, steps, warmup)
        probabilities = [np.asarray(predict(batch), dtype=np.float64).reshape(-1) for _, predict in contenders]
    finally:
        shutil.rmtree(export_root, ignore_errors=True)
        del model
        keras.backend.clear_session()
        gc.collect()

    base_mean = float(times_ms[0].mean())
    results = []
    for (label, _), times, probs in zip(contenders, times_ms, probabilities):
        mean_ms = float(times.mean())
        results.append(LatencyRow(
            backbone.name, label, params_m, mean_ms, float(times.std(ddof=1)) if steps > 1 else 0.0,
            float(times.min()), batch_size * 1000.0 / mean_ms, base_mean / mean_ms,
            float(np.max(np.abs(probs - probabilities[0]))), paper,
        ))
    return results, list(unavailable.values())


def _first_line(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------- command line


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="all", help="comma list of registry names, or all (default)")
    parser.add_argument("--size", type=int, default=512, help="image size in pixels (default 512, the study's)")
    parser.add_argument("--batch", type=int, default=8, help="images per inference step (default 8, the study's)")
    parser.add_argument(
        "--runtime", default="all",
        help="comma list of runtime[:precision] rows, runtime in keras, onnx, openvino; or all (default)."
             " Example: keras:bfloat16,onnx,openvino,openvino:float32",
    )
    parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                        help="precision of rows that name none (auto = the runtime's default on this device)")
    parser.add_argument("--jit", choices=("on", "off"), default="off", help="compile Keras rows with jit_compile")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default 10, the study's)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps (default 2)")
    parser.add_argument("--weights", default="none", help="imagenet | none (default; latency does not depend on weights) | path")
    parser.add_argument("--mlflow", action="store_true", help="log the results as an MLflow run in medfake-benchmarks")
    parser.add_argument("--out", default="reports/benchmarks", help="folder for latency-<device>.md (default reports/benchmarks)")


def run_bench(args: argparse.Namespace) -> int:
    from medfake.models.registry import get_backbone

    if args.size < 1 or args.batch < 1:
        raise UserError(f"--size and --batch must be positive, got {args.size} and {args.batch}")
    rows_asked = parse_rows(args.runtime, args.precision)
    models = model_names(args.models)
    if not models:
        raise UserError("--models names no backbone")
    too_small = [f"{get_backbone(m).name} (min {get_backbone(m).min_size})" for m in models if args.size < get_backbone(m).min_size]
    if too_small:
        raise UserError(f"--size {args.size} is below the minimum input size of {', '.join(too_small)}")
    jit = args.jit == "on"
    settings = {"models": ",".join(models), "size": args.size, "batch": args.batch, "runtime": args.runtime,
                "precision": args.precision, "jit": jit, "steps": args.steps, "warmup": args.warmup,
                "weights": args.weights}
    device, device_text = device_label()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / f"latency-{device}.md"
    command = _command_line(args)
    print(f"latency on {device_text}: {len(models)} model(s) at {args.size}² batch {args.batch}", flush=True)

    results: list[LatencyRow] = []
    failures: dict[str, str] = {}
    row_failures: list[str] = []
    load_averages = [_load_average()]
    for index, model in enumerate(models, start=1):
        print(f"[{index}/{len(models)}] {model}", flush=True)
        try:
            measured, unavailable = _in_fresh_process(benchmark_backbone, model, args.size, args.batch, rows_asked,
                                                      args.steps, args.warmup, args.weights, jit)
        except BrokenProcessPool:  # the child died: killed for memory, most likely
            measured, unavailable = [], []
            failures[model] = "the measuring process died (out of memory?)"
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 — one backbone's failure must not lose the others' hours
            measured, unavailable = [], []
            failures[model] = f"{type(exc).__name__}: {_first_line(exc)}"
        if model in failures:
            print(f"  {model}: failed: {failures[model]}", flush=True)
        for line in unavailable:
            row_failures.append(f"{model} — {line}")
            print(f"  {model}: not measured: {line}", flush=True)
        for row in measured:
            print(f"  {row.model:<18} {row.runtime:<26} {fmt_ms(row.mean_ms, row.std_ms):>20} ms"
                  f" (min {row.min_ms:,.1f})  {row.speedup:5.2f}×  max|Δp| {row.max_abs_delta:.1e}", flush=True)
        results += measured
        load_averages.append(_load_average())
        report_path.write_text(render_markdown(results, settings, device, device_text, command, models,
                                               finished=index == len(models),
                                               load_averages=[v for v in load_averages if v is not None],
                                               failures=failures, row_failures=row_failures))
    print(f"wrote {report_path}")
    if args.mlflow:
        run_id = log_to_mlflow(results, settings, device, report_path)
        print(f"logged MLflow run {run_id} in experiment {EXPERIMENT}")
    return 0


def _in_fresh_process(function: Callable, *args):
    """Run ``function(*args)`` in a new Python process: each backbone starts with clean memory."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _command_line(args: argparse.Namespace) -> str:
    """The full command that reproduces this run (every option spelled out), for the report."""
    options = ["--models", args.models, "--size", args.size, "--batch", args.batch, "--runtime", args.runtime,
               "--precision", args.precision, "--jit", args.jit, "--steps", args.steps, "--warmup", args.warmup,
               "--weights", args.weights, "--out", args.out]
    flags = ["--mlflow"] if args.mlflow else []
    return " ".join(["medfake bench latency", *(shlex.quote(str(o)) for o in options), *flags])
