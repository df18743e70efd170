"""Training speed: phase 1 on cached features against the naive frozen fit, and precision per backbone.

1. On a config's dataset (default quickstart), phase 1 runs twice from the same initial head:
   with the feature cache (one backbone pass, then the head alone) and naively (the frozen
   backbone re-run every epoch). The naive path is timed for ``--naive-epochs`` epochs and its
   per-epoch time projected to the phase-1 schedule (``--phase1-epochs``, the study's 80 by
   default); the cached path runs the whole schedule. Both paths' best val loss over the common
   epochs is reported to show they agree.
2. Phase-2 training images/s per backbone in float32 and bfloat16 (one short fit each, same run),
   and what ``precision: auto`` picks.
3. The projected wall time of the study's full protocol per backbone (512², 80 + 20 epochs,
   2,486 images, 70/15/15) from measured per-image step times at 512².
Results go to ``reports/benchmarks/train.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import time

import numpy as np

from medfake.bench import model_names, write_report
from medfake.bench.protocol_cost import StepCosts, run_seconds


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="quickstart", help="config whose dataset phase 1 runs on")
    parser.add_argument("--model", default="xception", help="backbone for the feature-cache comparison")
    parser.add_argument("--phase1-epochs", type=int, default=80, help="phase-1 schedule (study: 80)")
    parser.add_argument("--naive-epochs", type=int, default=2, help="naive epochs actually timed")
    parser.add_argument("--models", default="ResNet50V2,DenseNet121,MobileNetV3Large,Xception",
                        help="backbones for the precision and projection rows (comma list or 'all')")
    parser.add_argument("--size", type=int, default=128, help="image size for the precision rows")
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per precision row")
    parser.add_argument("--report", default="reports/benchmarks/train.md")


def _phase1(plan, dataset, cached: bool, epochs: int):
    from medfake.training.train import train_detector

    cfg = plan.cfg.replace(**{"train.feature_cache": cached, "train.phase1_epochs": epochs, "train.phase2_epochs": 0,
                              "train.precision": "float32"})
    plan = type(plan)(cfg=cfg, model=plan.model, stage=plan.stage, run_name=plan.run_name)
    started = time.perf_counter()
    out = train_detector(plan, dataset, None, lambda *a: None, progress=False)
    return time.perf_counter() - started, out["states"][0]


def _train_rate(name: str, size: int, precision: str, steps: int, batch: int = 8) -> float:
    """Images/s of full (unfrozen) training steps for one backbone and precision."""
    import keras

    from medfake.models import detector as det

    model = det.build_detector(name, size, weights=None, head_units=(512, 256), precision=precision)
    det.set_backbone_trainable(model, "all")
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="binary_crossentropy", jit_compile=False)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1000, 400, (batch, size, size, 1)).astype(np.float32)
    y = (rng.uniform(size=(batch, 1)) > 0.5).astype(np.float32)
    model.train_on_batch(x, y)  # warm-up (graph tracing)
    started = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return batch * steps / (time.perf_counter() - started)


def run_bench(args: argparse.Namespace) -> int:
    from medfake.core.config import load_config
    from medfake.data.preprocess import ensure_dataset
    from medfake.core.device import cpu_description
    from medfake.models.precision import choose
    from medfake.training.train import resolve_plan

    cfg = load_config(args.config)
    plan = resolve_plan(args.model, cfg, "bench")
    dataset, _ = ensure_dataset(plan.cfg, progress=False)
    n_train = int((dataset.manifest["split"] == "train").sum())
    cached_s, cached_state = _phase1(plan, dataset, True, args.phase1_epochs)
    cached_common_s, cached_common = _phase1(plan, dataset, True, args.naive_epochs)
    naive_s, naive_state = _phase1(plan, dataset, False, args.naive_epochs)
    naive_projected = naive_s / args.naive_epochs * args.phase1_epochs
    agree = abs(cached_common.best_val_loss - naive_state.best_val_loss)

    names = model_names(args.models)
    rows = []
    for name in names:
        f32 = _train_rate(name, args.size, "float32", args.steps)
        bf16 = _train_rate(name, args.size, "bfloat16", args.steps)
        auto, _ = choose("auto", "auto", name, "cpu")
        rows.append((name, f32, bf16, auto, {"float32": f32, "bfloat16": bf16}[auto] / f32))

    # Projection of the study's protocol at 512² from per-image costs measured here (head steps left out).
    projections = []
    for name in names:
        rate = _train_rate(name, 512, choose("auto", "auto", name, "cpu")[0], 2)
        infer_ms = _infer_ms(name)
        cached = run_seconds(StepCosts(infer_ms / 1000, 1 / rate))
        naive = run_seconds(StepCosts(infer_ms / 1000, 1 / rate, head_s=infer_ms / 1000))
        projections.append((name, rate, infer_ms, cached / 3600, naive / 3600))

    command = "medfake bench train " + " ".join(shlex.quote(a) for a in sys.argv[3:])
    lines = [
        "# Training benchmark",
        "",
        f"Data: **synthetic CT phantom** (`experiments/{args.config}.yaml`, {n_train} training slices at "
        f"{plan.cfg.data.image_size}²). Machine: {cpu_description()}, shared with other work; one run each, noisy.",
        f"Date: {dt.date.today().isoformat()}. Command: `{command.strip()}`",
        "",
        "## Phase 1: feature cache vs naive frozen fit",
        "",
        f"{args.model} backbone frozen, phase-1 schedule {args.phase1_epochs} epochs (the study's), batch {plan.cfg.train.batch_size}.",
        "",
        "| path | epochs run | seconds | seconds for the schedule |",
        "| --- | ---: | ---: | ---: |",
        f"| feature cache | {args.phase1_epochs} | {cached_s:.1f} | {cached_s:.1f} |",
        f"| naive frozen fit | {args.naive_epochs} | {naive_s:.1f} | {naive_projected:.1f} (projected from {args.naive_epochs} epochs) |",
        "",
        f"**Speed-up: {naive_projected / cached_s:.1f}×** (goal ≥ 20×). Same results: best val loss after "
        f"{args.naive_epochs} epochs, cached {cached_common.best_val_loss:.6f} vs naive {naive_state.best_val_loss:.6f} "
        f"(|Δ| = {agree:.1e}; the test suite checks head weights within 1e-4).",
        "",
        f"## Phase 2: training images/s by precision ({args.size}², batch 8, all layers trainable)",
        "",
        "| backbone | float32 | bfloat16 | `auto` picks | auto / float32 |",
        "| --- | ---: | ---: | --- | ---: |",
        *[f"| {n} | {a:.1f} | {b:.1f} | {p} | {r:.2f}× |" for n, a, b, p, r in rows],
        "",
        "## Projected wall time of the study's protocol on this CPU",
        "",
        "512², batch 8, 2,486 images (70/15/15), phase 1 80 epochs on cached features + phase 2 20 epochs, "
        "from measured per-image step times (2 training steps, 3 inference steps each — rough; "
        "`medfake bench device` also times the head's phase-1 steps).",
        "",
        "| backbone | train images/s (auto precision) | inference ms / image | hours with feature cache | hours naive |",
        "| --- | ---: | ---: | ---: | ---: |",
        *[f"| {n} | {r:.2f} | {ms:.0f} | {h:.1f} | {hn:.1f} |" for n, r, ms, h, hn in projections],
        "",
    ]
    write_report(args.report, lines)
    return 0


def _infer_ms(name: str) -> float:
    from medfake.models import detector as det

    model = det.build_detector(name, 512, weights=None)
    x = np.random.default_rng(0).uniform(-1000, 400, (8, 512, 512, 1)).astype(np.float32)
    model.predict_on_batch(x)
    started = time.perf_counter()
    for _ in range(3):
        model.predict_on_batch(x)
    return (time.perf_counter() - started) / 3 / 8 * 1000
