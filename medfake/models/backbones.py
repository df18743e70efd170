"""List the backbone registry: parameters with the study's head, minimum size, input scaling, ImageNet file.

Parameter counts include the head (GAP → Dense 512 → Dense 256 → Dense 1) and are counted with
random weights; they do not depend on the image size, so each model is built at its minimum size
(fast), and ``--size`` only marks the backbones that cannot take that size.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path

from medfake.core.errors import UserError


def params_cache_file() -> Path:
    """JSON cache of counted parameters: ``$XDG_CACHE_HOME/medfake`` (default ``~/.cache/medfake``)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "medfake" / "backbone-params.json"


def params_cache_key(name: str, head_units: tuple[int, ...] = (512, 256)) -> str:
    import keras

    return f"{name}|head={'-'.join(map(str, head_units))}|keras={keras.__version__}"


@functools.lru_cache(maxsize=None)
def detector_params_m(name: str, head_units: tuple[int, ...] = (512, 256)) -> float:
    """Parameters (M) of the detector built on ``name``, with the head; the same at any input size.

    Counting builds the model (seconds each), so results are kept in ``params_cache_file()`` keyed
    by backbone, head and Keras version.
    """
    import keras

    from medfake.models.registry import get_backbone
    from medfake.models.detector import build_detector, count_params_m

    backbone = get_backbone(name)
    key = params_cache_key(backbone.name, head_units)
    cache_file = params_cache_file()
    try:
        cached = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached, dict) and isinstance(cached.get(key), (int, float)):
        return float(cached[key])
    model = build_detector(backbone, backbone.min_size, weights=None, head_units=head_units)
    params = count_params_m(model)
    del model
    keras.backend.clear_session()
    cached = cached if isinstance(cached, dict) else {}
    cached[key] = params
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(cached, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only home only costs the rebuild next time
    return params


def registry_rows(size: int) -> list[dict]:
    """One dict per backbone: the registry's facts, params with head, and whether its weights are cached."""
    from medfake.models.registry import list_backbones
    from medfake.models.weights import is_cached

    return [
        {
            "name": b.name,
            "params_m": round(detector_params_m(b.name), 2),
            "paper_params_m": b.paper_params_m,
            "min_size": b.min_size,
            "fits_size": size >= b.min_size,
            "feature_width": b.feature_width,
            "scaling": b.scaling,
            "weights_file": b.weights_file,
            "weights_url": b.weights_url,
            "cached": is_cached(b),
            "paper_latency_ms": list(b.paper_latency_ms),
        }
        for b in list_backbones()
    ]


def render_table(rows: list[dict], size: int) -> str:
    from medfake.models.weights import cache_dir

    header = ("backbone", "params M", "paper M", "min size", f"{size}px", "scaling", "ImageNet file", "cached")
    body = [
        (r["name"], f"{r['params_m']:.2f}", f"{r['paper_params_m']:.1f}", str(r["min_size"]),
         "ok" if r["fits_size"] else "too small", r["scaling"], r["weights_file"], "yes" if r["cached"] else "no")
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in (header, *body)]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append(f"params include the head (512-256-1); ImageNet cache: {cache_dir()}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=512, help="image size to check against each minimum (default 512)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of the table")


def run(args: argparse.Namespace) -> int:
    if args.size < 1:
        raise UserError(f"--size must be positive, got {args.size}")
    rows = registry_rows(args.size)
    print(json.dumps(rows, indent=2) if args.json else render_table(rows, args.size))
    return 0
