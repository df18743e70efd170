"""Benchmarks: ``medfake bench <name>``, one module per benchmark.

Each benchmark module provides ``add_bench_arguments(parser)`` and ``run_bench(args) -> int`` and
keeps heavy imports inside functions; adding a benchmark is one entry in ``BENCHES``.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

# benchmark → (module, one-line help)
BENCHES: dict[str, tuple[str, str]] = {
    "latency": ("medfake.bench.latency", "inference latency per backbone and runtime (the study's Table 3 method)"),
    "preprocess": ("medfake.bench.preprocess", "preprocess throughput: header-first selective decoding vs decoding all"),
    "train": ("medfake.bench.train", "phase 1 feature cache vs naive fit, precision per backbone, paper wall time"),
    "scan": ("medfake.bench.scan", "scanning one CT series: medfake scan's path vs dcmread + Keras predict per slice"),
    "device": ("medfake.bench.device", "one process, every backbone: latency, training throughput, the study's wall time (GPU)"),
    "precision": ("medfake.bench.precision", "max |Δp| of each runtime and precision on one small trained detector per backbone"),
    "tracking": ("medfake.bench.tracking", "8 workers logging metrics to SQLite and the PostgreSQL server; server killed mid-run"),
}


def model_names(text: str) -> list[str]:
    """A ``--models`` value: "all" (the registry's 13), "none" or empty (no backbone), or a comma list
    of registry names in any spelling the registry takes (unknown names are a UserError)."""
    from medfake.models.registry import get_backbone, list_backbones

    text = text.strip()
    if text.lower() == "all":
        return [backbone.name for backbone in list_backbones()]
    if text.lower() in ("", "none"):
        return []
    return [get_backbone(name.strip()).name for name in text.split(",") if name.strip()]


def write_report(path: str | Path, lines: list[str]) -> None:
    """Write a benchmark's markdown report (creating its folder) and print it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print("\n".join(lines))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, (module_name, help_text) in BENCHES.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # benchmark not built yet in this checkout
        child = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_bench_arguments(child)
        child.set_defaults(_bench_module=module_name)


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(args._bench_module)
    return int(module.run_bench(args) or 0)
