"""The ``medfake`` command: one subcommand per step, each a thin call into its module.

Every step module provides ``add_arguments(parser)`` and ``run(args) -> int`` and keeps heavy
imports (tensorflow, mlflow) inside functions, so ``medfake --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from medfake.core.errors import UserError

# subcommand → (module, one-line help). Adding a step is one entry.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("medfake.data.synth", "write a synthetic CT phantom in the CT-GAN and LIDC-IDRI layouts"),
    "inspect": ("medfake.io.inspect", "summarise a DICOM file or series folder and the problems found"),
    "preprocess": ("medfake.data.preprocess", "build the balanced slice dataset of a config (cached, logged)"),
    "backbones": ("medfake.models.backbones", "list the backbone registry (params, min size, weights cached)"),
    "train": ("medfake.training.train", "two-phase transfer learning of one backbone, logged to MLflow"),
    "tune": ("medfake.study.tune", "hyperparameter search with Optuna over the train step; resumable, parallel"),
    "bench": ("medfake.bench", "benchmarks: preprocess, latency, train, tracking"),
    "select": ("medfake.study.select", "rank screened backbones by H, repeat the top k, compare them (Tables A1, 2)"),
    "ensemble": ("medfake.study.ensemble", "combine the top selected detectors into one logged, servable detector"),
    "paper": ("medfake.study.paper", "the whole study for a config: preprocess, screen, select, report (resumable)"),
    "report": ("medfake.study.report", "render the study's tables and figures from the tracking store"),
    "promote": ("medfake.registry.promote", "register the best run's detector and move the champion alias by a stated rule"),
    "scan": ("medfake.inference.scan", "score every slice of CT series with a detector; flag suspicious slice ranges"),
    "explain": ("medfake.inference.explain", "Grad-CAM/occlusion maps of a detector, scored against the known tamper positions"),
    "evaluate": ("medfake.inference.evaluate", "score a logged or registered detector on another dataset config, without retraining"),
    "runs": ("medfake.core.runs", "list RUNNING runs whose process is gone or heartbeat stale; --end ends them FAILED"),
    "server": ("medfake.core.server", "start a team tracking server: mlflow server on PostgreSQL, artifacts proxied"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medfake",
        description="Detect GAN-tampered CT slices with deep CNNs; every step is tracked in MLflow.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="STEP")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # step not built yet in this checkout
        child = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(child)
        child.set_defaults(_module=module_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from medfake import __version__

        print(__version__)
        return 0
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        print(f"medfake {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"medfake {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
