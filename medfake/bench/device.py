"""One process, every backbone: inference latency, training throughput and the study's wall time on this device.

Made for a GPU lent for minutes (Keras on JAX there, no TensorFlow): ``medfake bench latency``
starts a fresh process per backbone and calibrates random detectors eagerly, which cost ~2.5 min
per backbone on an H100 outside the timed steps. Here every backbone is built, compiled once and
timed in this process, and dropped before the next:

1. Latency (the study's Table 3 method): ``--warmup`` calls (the first compiles), then ``--steps``
   timed ``predict_on_batch`` calls on one batch of random chest-like slices; the seconds spent on
   that backbone outside the timed steps (build, compile, warm-up) are its *overhead*. Random
   weights: latency does not depend on them, and no |Δp| is reported (``bench precision`` measures
   that on trained detectors). Also the head's phase-1 step on pooled features, which the feature
   cache runs 80 epochs.
2. Training throughput of ``--train-models``: phase-2 steps (every layer trainable) at ``--batch``,
   then at doubled batches up to ``--max-batch`` until the device runs out of memory.
3. The study's 25 runs projected from those per-image costs (``protocol_cost``), at batch 8 and at
   the largest batch that fits; backbones without a training row get the median train/inference
   cost ratio of those with one, and are marked.

The report goes to ``<out>/device-<device>.md`` after every backbone, so a run cut short keeps what it
measured; ``--time-limit`` stops starting new measurements after that many seconds.
"""

from __future__ import annotations

import argparse
import gc
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfake.bench import model_names
from medfake.bench.latency import random_ct_batch
from medfake.bench.protocol_cost import Protocol, StepCosts, run_seconds, study_seconds
from medfake.core.device import device_label, interleaved_step_times_ms
from medfake.core.errors import UserError

TRAIN_DEFAULT = "Xception,ResNet50V2,MobileNetV3Large"
OVERHEAD_GOAL_S = 20.0
STUDY_GOAL_H = 1.0


@dataclass(frozen=True)
class LatencyResult:
    model: str
    params_m: float
    build_s: float
    compile_s: float  # first call: tracing and compiling plus one step
    overhead_s: float  # everything for this backbone outside the timed steps
    mean_ms: float
    std_ms: float
    min_ms: float
    head_s: float  # seconds per image of the head's phase-1 training step


@dataclass(frozen=True)
class TrainResult:
    model: str
    precision: str
    batch: int
    images_s: float
    compile_s: float
    max_batch: int
    max_images_s: float
    stopped: str  # why the batch search ended


def _release() -> None:
    import keras

    keras.backend.clear_session()
    gc.collect()


def measure_latency(name: str, size: int, batch: int, steps: int, warmup: int) -> LatencyResult:
    from medfake.models.detector import POOL_NAME, build_detector, count_params_m

    started = time.perf_counter()
    model = build_detector(name, size, weights=None)
    built = time.perf_counter()
    images = random_ct_batch(batch, size, seed=0)
    model.predict_on_batch(images)
    compiled = time.perf_counter()
    times_ms = interleaved_step_times_ms([model.predict_on_batch], images, steps, max(warmup - 1, 0))[0]
    overhead = time.perf_counter() - started - times_ms.sum() / 1000
    width = int(model.get_layer(POOL_NAME).output.shape[-1])
    params = count_params_m(model)
    del model
    _release()
    return LatencyResult(name, params, built - started, compiled - built, overhead, float(times_ms.mean()),
                         float(times_ms.std(ddof=1)) if steps > 1 else 0.0, float(times_ms.min()),
                         _head_seconds(width, batch))


def _head_seconds(width: int, batch: int, steps: int = 20) -> float:
    """Seconds per image of a phase-1 step: the head alone on pooled features of ``width``."""
    import keras

    from medfake.models.detector import head_model

    head = head_model(width)
    head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(batch, width)).astype(np.float32)
    labels = (rng.uniform(size=(batch, 1)) > 0.5).astype(np.float32)
    head.train_on_batch(features, labels)
    started = time.perf_counter()
    for _ in range(steps):
        head.train_on_batch(features, labels)
    return (time.perf_counter() - started) / steps / batch


def out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is the device running out of memory (XLA's or TensorFlow's wording)."""
    text = f"{type(exc).__name__} {exc}".lower()
    return any(mark in text for mark in ("resource_exhausted", "resourceexhausted", "out of memory", "oom when allocating"))


def largest_batch(rate_at: Callable[[int], float], first: int, cap: int) -> tuple[int, float, str]:
    """Double the batch from ``2 * first`` while it fits and stays ≤ ``cap``; (batch, images/s, why it stopped).

    ``rate_at(first)`` must already have succeeded: its rate is the fallback. Errors other than
    running out of memory propagate.
    """
    best, best_rate = first, rate_at(first)
    batch = first * 2
    while batch <= cap:
        try:
            rate = rate_at(batch)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory ends the search quietly
            if not out_of_memory(exc):
                raise
            return best, best_rate, f"out of memory at batch {batch}"
        best, best_rate, batch = batch, rate, batch * 2
    return best, best_rate, f"--max-batch {cap}"


def measure_training(name: str, size: int, batch: int, steps: int, precision: str, cap: int) -> TrainResult:
    import keras

    from medfake.models.detector import build_detector, set_backbone_trainable
    from medfake.models.precision import accelerator, choose

    precision, jit = choose(precision, "auto", name, accelerator())
    model = build_detector(name, size, weights=None, precision=precision)
    set_backbone_trainable(model, "all", freeze_batchnorm=False)
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="binary_crossentropy", jit_compile=jit)
    rng = np.random.default_rng(0)
    first_call: dict[int, float] = {}
    rates: dict[int, float] = {}

    def rate_at(n: int) -> float:
        if n not in rates:
            images = random_ct_batch(n, size, seed=n)
            labels = (rng.uniform(size=(n, 1)) > 0.5).astype(np.float32)
            started = time.perf_counter()
            model.train_on_batch(images, labels)
            first_call[n] = time.perf_counter() - started
            started = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(images, labels)
            rates[n] = n * steps / (time.perf_counter() - started)
        return rates[n]

    try:
        rate_at(batch)
        best, best_rate, stopped = largest_batch(rate_at, batch, cap)
    finally:
        model = None  # the closure holds the model too: drop it before collecting
        _release()
    return TrainResult(name, precision, batch, rates[batch], first_call[batch], best, best_rate, stopped)


def projection(latency: list[LatencyResult], training: list[TrainResult], batch: int,
               at_max: bool, protocol: Protocol) -> tuple[dict[str, StepCosts], set[str]]:
    """Per-backbone costs for ``study_seconds`` and the backbones whose training cost is estimated."""
    trained = {row.model: row for row in training}
    infer = {row.model: row.mean_ms / 1000 / batch for row in latency}

    def train_s(row: TrainResult) -> float:
        return 1 / (row.max_images_s if at_max else row.images_s)

    ratios = [train_s(row) / infer[row.model] for row in training if row.model in infer]
    ratio = float(np.median(ratios)) if ratios else float("nan")
    costs, estimated = {}, set()
    for row in latency:
        if row.model in trained:
            cost = train_s(trained[row.model])
        else:
            cost = infer[row.model] * ratio
            estimated.add(row.model)
        costs[row.model] = StepCosts(infer[row.model], cost, row.head_s)
    return costs, estimated


# ---------------------------------------------------------------- report and command line


def render(latency: list[LatencyResult], training: list[TrainResult], settings: dict, device_text: str,
           command: str, skipped: list[str], failures: list[str], protocol: Protocol) -> list[str]:
    import datetime as dt
    import os

    from medfake.bench.latency_report import fmt_ms

    batch = settings["batch"]
    lines = [
        f"# One process, every backbone — {device_text}",
        "",
        f"- Command: `{command}`",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; load average {os.getloadavg()[0]:.1f} at the end",
        f"- Keras backend: {settings['backend']}; input {settings['size']}², one batch of random chest-like slices "
        f"in HU, random weights (latency does not depend on them; no |Δp| here, see `bench precision`)",
        f"- Wall time of the whole run: {settings['wall_s']:.0f} s",
        "",
        f"## Inference latency (batch {batch}, {settings['warmup']} warm-up + {settings['steps']} timed steps)",
        "",
        "Overhead: the seconds spent on the backbone outside its timed steps (build, first call = trace and "
        f"compile, warm-up), goal ≤ {OVERHEAD_GOAL_S:.0f} s. Head step: the phase-1 step on cached features.",
        "",
        "| model | params (M) | ms / step (mean ± std) | min ms | images/s | build s | first call s | overhead s | head step µs / image |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *[f"| {r.model} | {r.params_m:.2f} | {fmt_ms(r.mean_ms, r.std_ms)} | {r.min_ms:,.1f} | "
          f"{batch * 1000 / r.mean_ms:,.1f} | {r.build_s:.1f} | {r.compile_s:.1f} | {r.overhead_s:.1f} | "
          f"{r.head_s * 1e6:,.1f} |" for r in latency],
        "",
    ]
    if latency:
        within = [r.model for r in latency if r.overhead_s <= OVERHEAD_GOAL_S]
        lines += [f"Overhead ≤ {OVERHEAD_GOAL_S:.0f} s: {len(within)} of {len(latency)} backbones "
                  f"(largest {max(r.overhead_s for r in latency):.1f} s, {max(latency, key=lambda r: r.overhead_s).model}).", ""]
    lines += [
        f"## Training throughput (phase 2: every layer trainable, {settings['train_steps']} timed steps after one untimed)",
        "",
        "| model | precision | images/s at batch {0} | first call s | largest batch | images/s there | search stopped |".format(batch),
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
        *[f"| {r.model} | {r.precision} | {r.images_s:,.1f} | {r.compile_s:.1f} | {r.max_batch} | {r.max_images_s:,.1f} | "
          f"{r.stopped} |" for r in training],
        "",
    ]
    if latency and training:
        train, val, test = protocol.split()
        lines += [
            f"## The study's protocol projected ({protocol.runs(len(latency))} runs)",
            "",
            f"At this run's {settings['size']}² (the study's is 512²): {protocol.images:,} images split "
            f"{train:,}/{val:,}/{test:,}; per run one feature pass, phase 1 "
            f"{protocol.phase1_epochs} epochs of head steps on cached features, phase 2 {protocol.phase2_epochs} epochs "
            f"with a validation pass each, one test pass. {len(latency)} backbones screened once; the {protocol.top_k} "
            f"slowest counted as the ones repeated {protocol.repeats}× (an upper bound: the screen picks the top six). "
            "Data loading, MLflow logging and evaluation plots are not counted.",
            "",
            "| phase-2 batch | hours | repeated | training cost estimated for |",
            "| --- | ---: | --- | --- |",
        ]
        for at_max in (False, True):
            costs, estimated = projection(latency, training, batch, at_max, protocol)
            seconds, repeated = study_seconds(costs, protocol)
            label = "largest that fits (measured rows)" if at_max else str(batch)
            lines.append(f"| {label} | {seconds / 3600:.2f} | {', '.join(repeated)} | "
                         f"{', '.join(sorted(estimated)) or '—'} |")
        costs, _ = projection(latency, training, batch, False, protocol)
        lines += ["", "Per run at batch {0}: ".format(batch) + ", ".join(
            f"{name} {run_seconds(cost, protocol) / 60:.1f} min" for name, cost in costs.items()) + ".",
            f"Goal: the whole protocol ≤ {STUDY_GOAL_H:.0f} h on one GPU"
            + ("." if settings["device"].startswith("gpu") else " (this run is not on a GPU)."), ""]
    if skipped:
        lines += ["## Not measured", "", *[f"- {line}" for line in skipped], ""]
    if failures:
        lines += ["## Failed", "", *[f"- {line}" for line in failures], ""]
    return lines


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="all", help="latency rows: comma list of registry names, or all (default)")
    parser.add_argument("--train-models", default=TRAIN_DEFAULT,
                        help=f"training-throughput rows: comma list, all or none (default {TRAIN_DEFAULT})")
    parser.add_argument("--size", type=int, default=512, help="image size (default 512, the study's)")
    parser.add_argument("--batch", type=int, default=8, help="batch of latency and first training rows (default 8)")
    parser.add_argument("--steps", type=int, default=10, help="timed inference steps (default 10, the study's)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed inference calls, the first compiles (default 2)")
    parser.add_argument("--train-steps", type=int, default=5, help="timed training steps per batch size (default 5)")
    parser.add_argument("--max-batch", type=int, default=256, help="largest training batch tried (default 256)")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="training precision (auto: what train picks on this device)")
    parser.add_argument("--time-limit", type=float, default=0.0,
                        help="seconds after which no new measurement starts (0: none)")
    parser.add_argument("--out", default="reports/benchmarks", help="folder for device-<device>.md")


def run_bench(args: argparse.Namespace) -> int:
    import keras

    from medfake.models.registry import get_backbone

    if min(args.size, args.batch, args.steps, args.train_steps) < 1 or args.warmup < 1:
        raise UserError("--size, --batch, --steps, --train-steps and --warmup must be at least 1")
    models, train_models = model_names(args.models), model_names(args.train_models)
    too_small = [f"{n} (min {get_backbone(n).min_size})" for n in dict.fromkeys(models + train_models)
                 if args.size < get_backbone(n).min_size]
    if too_small:
        raise UserError(f"--size {args.size} is below the minimum input size of {', '.join(too_small)}")
    device, device_text = device_label()
    report = Path(args.out) / f"device-{device}.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    command = _command_line(args)
    protocol = Protocol()  # the paper config's (tests/bench/test_device.py): no config or MLflow import here
    started = time.perf_counter()
    settings = {"backend": keras.backend.backend(), "device": device, "size": args.size, "batch": args.batch, "steps": args.steps,
                "warmup": args.warmup, "train_steps": args.train_steps}
    latency: list[LatencyResult] = []
    training: list[TrainResult] = []
    skipped: list[str] = []
    failures: list[str] = []

    def write() -> None:
        settings["wall_s"] = time.perf_counter() - started
        report.write_text("\n".join(render(latency, training, settings, device_text, command, skipped, failures,
                                           protocol)))

    jobs = [("latency", name) for name in models] + [("training", name) for name in train_models]
    print(f"bench device on {device_text}: {len(models)} latency and {len(train_models)} training rows", flush=True)
    for kind, name in jobs:
        if args.time_limit and time.perf_counter() - started > args.time_limit:
            skipped.append(f"{name} {kind}: --time-limit {args.time_limit:.0f} s reached")
            continue
        failed = len(failures)
        try:
            if kind == "latency":
                latency.append(measure_latency(name, args.size, args.batch, args.steps, args.warmup))
            else:
                training.append(measure_training(name, args.size, args.batch, args.train_steps, args.precision,
                                                 args.max_batch))
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - one backbone's failure must not lose the others' rows
            failures.append(f"{name} {kind}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            _release()
        print(f"  {kind} {name}: {'failed' if len(failures) > failed else 'done'} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
        write()
    write()
    print("\n".join(render(latency, training, settings, device_text, command, skipped, failures, protocol)))
    print(f"wrote {report}")
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The run's command with every option spelled out, for the report."""
    names = ("models", "train_models", "size", "batch", "steps", "warmup", "train_steps", "max_batch", "precision",
             "time_limit", "out")
    options = " ".join(f"--{name.replace('_', '-')} {shlex.quote(str(getattr(args, name)))}" for name in names)
    return f"medfake bench device {options}"


def main(argv: list[str] | None = None) -> int:
    """``python -m medfake.bench.device``: the same benchmark on a machine with only keras, numpy and a
    backend installed (the CLI's other steps need MLflow, pydicom, …; this one does not)."""
    parser = argparse.ArgumentParser(prog="python -m medfake.bench.device", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_arguments(parser)
    try:
        return run_bench(parser.parse_args(argv))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
