"""Preprocess throughput: header-first selective decoding against decoding every slice.

Builds (or reuses) a CT-GAN-sized phantom (default 100 tampered scans + 20 LIDC-style scans at
512², ~120 slices each), then in the same run times (a) decoding every slice of every scan with
pydicom, the way a naive pipeline starts, and (b) the ``preprocess`` step itself (header pass,
selection, decoding only the chosen slices, resize, atomic cache write) for the study's protocol
(``paper`` config: random LIDC negatives, random split). Both produce the same dataset slices;
the ratio is (a) / (b). Module imports are outside both timings. The report also says where (b)'s
time went, phase by phase, as ``build`` measured it in the same run. Results go to
``reports/benchmarks/preprocess.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from medfake.bench import write_report
from medfake.core.errors import UserError
from medfake.core.config import load_config
from medfake.core.device import cpu_description
from medfake.data import preprocess as build
from medfake.data.phantom import ensure_phantom


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scans", type=int, default=100, help="CT-GAN-style tampered scans (default 100, as CT-GAN)")
    parser.add_argument("--lidc-scans", type=int, default=20, help="LIDC-style scans (default 20)")
    parser.add_argument("--size", type=int, default=512, help="slice size (default 512)")
    parser.add_argument("--slices", type=int, default=120, help="slices per scan (default 120)")
    parser.add_argument("--config", default="paper", help="experiment whose data protocol is built (default paper)")
    parser.add_argument("--phantom", default=".medfake/bench/phantom", help="where the phantom is written or reused")
    parser.add_argument("--report", default="reports/benchmarks/preprocess.md", help="markdown report to write")


def _decode_everything(roots: list[Path]) -> tuple[int, float]:
    """Decode every DICOM slice under the roots to HU with plain pydicom (the naive way)."""
    import numpy as np
    import pydicom

    count, started = 0, time.perf_counter()
    for root in roots:
        for folder, _dirs, files in os.walk(root):
            for name in files:
                if not name.endswith(".dcm"):
                    continue
                ds = pydicom.dcmread(os.path.join(folder, name))
                hu = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1)) + float(
                    getattr(ds, "RescaleIntercept", 0)
                )
                count += int(hu.size > 0)
    return count, time.perf_counter() - started


def _read_every_file(roots: list[Path]) -> None:
    """Read every file once, untimed, so that both pipelines find them in the page cache (a
    phantom written long ago, or larger than the cache, would otherwise charge disk reads to the
    first pipeline timed)."""
    for root in roots:
        for folder, _dirs, files in os.walk(root):
            for name in files:
                with open(os.path.join(folder, name), "rb", buffering=0) as handle:
                    while handle.read(1 << 20):
                        pass


def _read_once(path: Path) -> float:
    """Seconds to read a file once into a reused buffer: what the first step reading the built
    dataset pays, from the page cache or, for rows written direct, from the disk."""
    buffer = bytearray(16 << 20)
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while handle.readinto(buffer):
            pass
    return time.perf_counter() - started


def _import_build_modules() -> None:
    """What ``build`` imports on first use (the naive pass imports pydicom before its clock starts)."""
    import sklearn.model_selection  # noqa: F401 - the random split
    import tqdm  # noqa: F401


PHASES = {
    "digest": "dataset digest (file listing, label CSVs)",
    "headers": "header pass of every file, series ordering, slice selection",
    "splits": "split assignment",
    "decode": "reading the selected slices' pixels, HU (rounded to int16 here when stored at their own size)",
    "resize": "resize, rounding, int16 cast (slices stored at another size)",
    "write": "images.npy (the part not overlapped with decoding), manifest, dataset.json",
}


def phase_lines(phases: dict[str, float], total: float) -> list[str]:
    """The markdown table of where ``build``'s time went."""
    lines = ["| phase of medfake preprocess | seconds | share |", "| --- | ---: | ---: |"]
    for name, what in PHASES.items():
        seconds = phases.get(name, 0.0)
        lines.append(f"| {name}: {what} | {seconds:.2f} | {seconds / total:.0%} |")
    rest = total - sum(phases.values())
    lines.append(f"| other (opening the result) | {max(rest, 0.0):.2f} | {max(rest, 0.0) / total:.0%} |")
    return lines


def run_bench(args: argparse.Namespace) -> int:

    if args.scans < 2 or args.size < 32:
        raise UserError("--scans must be ≥ 2 and --size ≥ 32")
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    info = ensure_phantom(Path(args.phantom), scans=args.scans, lidc_scans=args.lidc_scans, size=args.size,
                          slices=args.slices, seed=11, progress=True)
    synth_seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="medfake-bench-") as cache:
        cfg = load_config(args.config, [
            f"data.image_size={args.size}", f"data.cache_dir={cache}", f"data.phantom.root={args.phantom}",
            f"data.phantom.scans={args.scans}", f"data.phantom.lidc_scans={args.lidc_scans}",
            f"data.phantom.size={args.size}", f"data.phantom.slices={args.slices}", "data.phantom.seed=11",
        ])
        roots = [Path(info.ctgan_root), Path(info.lidc_root)]
        _read_every_file(roots)
        naive_count, naive_seconds = _decode_everything(roots)
        inputs = build.resolve_inputs(cfg, progress=False)
        _import_build_modules()
        started = time.perf_counter()
        dataset, _reused, stats = build.build(cfg, progress=False, inputs=inputs)
        ours_seconds = time.perf_counter() - started
        dataset_slices = len(dataset.manifest)
        read_seconds = _read_once(dataset.path / "images.npy")
    speedup = naive_seconds / ours_seconds
    rows = [
        ("decode every slice (pydicom, naive)", naive_count, naive_seconds, dataset_slices / naive_seconds),
        ("medfake preprocess (headers first, selective decode)", stats["decoded"], ours_seconds,
         dataset_slices / ours_seconds),
    ]
    command = "medfake bench preprocess " + " ".join(shlex.quote(a) for a in sys.argv[3:])
    lines = [
        "# Preprocess benchmark",
        "",
        f"Data: **synthetic CT phantom** (not real scans): {args.scans} CT-GAN-style tampered scans + "
        f"{args.lidc_scans} LIDC-style scans, {args.size}², ~{args.slices} slices each "
        f"({naive_count} DICOM files); protocol of `experiments/{args.config}.yaml` → {dataset_slices} dataset slices.",
        f"Machine: {cpu_description()}; 1-minute load average {load_before:.2f} before (timings are one run).",
        f"Date: {dt.date.today().isoformat()}. Command: `{command.strip()}` (phantom written in {synth_seconds:.0f} s, not timed below; every file read once before timing, so both find them in the page cache; module imports outside both timings).",
        "",
        "| pipeline | slices decoded | seconds | dataset slices / s |",
        "| --- | ---: | ---: | ---: |",
        *[f"| {name} | {n} | {sec:.2f} | {rate:.1f} |" for name, n, sec, rate in rows],
        "",
        f"**Speed-up of header-first selective decoding: {speedup:.1f}×** (goal ≥ 5×).",
        "",
        f"Reading the built images.npy once afterwards (what the first step to use it pays; not in either "
        f"row above): {read_seconds:.2f} s. Rows of whole 4 KiB blocks are written around the page cache "
        f"(O_DIRECT, `medfake/data/images.py`), so this read comes from the disk.",
        "",
        "Where medfake preprocess spent its time (same run):",
        "",
        *phase_lines(stats["phases"], ours_seconds),
        "",
    ]
    write_report(args.report, lines)
    return 0
