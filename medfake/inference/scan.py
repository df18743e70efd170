"""The ``scan`` step: score every slice of CT series with a detector and flag suspicious slice ranges.

PATH is a series folder, one DICOM file, a CT-GAN root (every scan) or any other root such as
LIDC-IDRI (every CT series found by SeriesInstanceUID). Slices are scored in batches by a
registered model (default ``models:/medfake-detector@champion``), a run id, a local model, or a
running scoring server (``--endpoint``). Per series the output is the score profile along z,
the suspicious ranges (consecutive slices with P(fake) ≥ ``--threshold``, with their peak) and a
verdict by a stated rule. Slices are numbered by file number when file numbers run along z
(CT-GAN's ``0.dcm … N-1.dcm``, what its labels' ``slice`` means), so a user can open the slice.
With ``--truth`` (the phantom's sidecar ground truth) series-level detection and false-alarm
rates and the z-overlap (IoU) of flagged ranges with the true tamper extents are reported.

Nothing from the DICOM header but pixel data and geometry is used; series are named by a salted
hash of the SeriesInstanceUID (and, for CT-GAN, by the data set's own experiment/scan number).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medfake.core.errors import DICOMError, UserError
from medfake.inference.loading import (CHECKED, DEFAULT_MODEL, PRECISION_CHOICES, RUNTIME_CHOICES, Scorer, load_scorer, mlflow_model_info, note,
                                       resolve_model, size_from_signature)
from medfake.inference.scan_explain import METHOD_HELP, explain_ranges, explainer_for
from medfake.inference.scan_output import format_report, log_to_mlflow, write_plots
from medfake.inference.scan_series import SeriesSource, find_series, score_series
from medfake.training.verdict import (DEFAULT_MIN_SLICES, DEFAULT_THRESHOLD, scan_level, series_verdict, tamper_hits,
                                      verdict_rule, z_iou)

REPORT_VERSION = 1
_TRUTH_COLUMNS = ("experiment", "uuid", "z_first", "z_last")


# -- the report of one series -----------------------------------------------------------------
def series_report(source: SeriesSource, series, scored: dict, threshold: float, min_slices: int) -> dict:
    """The JSON-ready result of one series (schema in :func:`report_schema`)."""
    from medfake.io.privacy import deidentify

    scores = scored["scores"]
    slices = scored["slices"]
    verdict = series_verdict(scores, threshold, min_slices)  # the rule train's scan-level metrics use too
    ranges = []
    for (first, last), counts in zip(verdict.ranges, verdict.counts):
        peak = first + int(np.argmax(scores[first : last + 1]))
        ranges.append({
            "first": slices[first], "last": slices[last], "slices": last - first + 1,
            "peak_slice": slices[peak], "peak_score": round(float(scores[peak]), 6),
            "counts": counts, "peak_xy": None,  # (x, y) in the slice's own pixels with --explain
        })
    skipped = [{"file": name, "reason": reason} for name, reason in list(series.skipped) + scored["decode_skipped"]]
    top = verdict.max_position
    return {
        "series_id": deidentify(series.series_uid),
        "scan": source.scan,
        "folder": source.display,
        "slices_scored": int(len(scores)),
        "slice_numbering": scored["numbering"],
        "verdict": verdict.label,
        "max_score": round(float(scores[top]), 6),
        "max_slice": slices[top],
        "ranges": ranges,
        "scores": [{"slice": s, "file": f, "score": round(float(p), 6)}
                   for s, f, p in zip(slices, scored["files"], scores)],
        "skipped": skipped,
        "problems": list(series.problems),
        "resampled": scored["resampled"],
    }


def report_schema() -> dict[str, Any]:
    """Keys and types of the ``--json`` report (checked by the tests; documented for users)."""
    return {
        "report": {"medfake_scan_version": int, "model": str, "runtime": str, "threshold": float,
                   "min_slices": int, "rule": str, "series": list, "rejected": list, "evaluation": (dict, type(None))},
        "series": {"series_id": str, "scan": (str, type(None)), "folder": str, "slices_scored": int,
                   "slice_numbering": str, "verdict": str, "max_score": float, "max_slice": int, "ranges": list,
                   "scores": list, "skipped": list, "problems": list, "resampled": (str, type(None))},
        "range": {"first": int, "last": int, "slices": int, "peak_slice": int, "peak_score": float, "counts": bool,
                  "peak_xy": (list, type(None))},
        "score": {"slice": int, "file": str, "score": float},
        "skipped": {"file": str, "reason": str},
        "rejected": {"folder": str, "reason": str},
        "evaluation": {"series": int, "tampered": int, "untampered": int, "detected": int, "false_alarms": int,
                       "detection_rate": (float, type(None)), "false_alarm_rate": (float, type(None)),
                       "mean_iou": (float, type(None)), "tamper_hit_rate": (float, type(None)), "per_series": list},
        "per_series": {"series_id": str, "scan": (str, type(None)), "tampered": bool, "suspicious": bool,
                       "true_ranges": list, "iou": (float, type(None))},
    }


# -- evaluation against the phantom's ground truth --------------------------------------------
def load_truth(truth_dir: str | os.PathLike) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """(EXP1, uuid) → true tamper extents [(z_first, z_last)] (file numbers) from ``tampers.csv``."""
    import csv

    from medfake.data import ctgan

    path = Path(truth_dir) / "tampers.csv"
    if not path.is_file():
        raise UserError(f"--truth {truth_dir}: no tampers.csv there (the phantom writes it under <phantom>/truth)")
    truth: dict[tuple[str, str], list[tuple[int, int]]] = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in _TRUTH_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
        for row_number, row in enumerate(reader, start=2):
            try:
                key = (ctgan.normalize_experiment(row["experiment"]), str(row["uuid"]).strip())
                extent = (int(row["z_first"]), int(row["z_last"]))
            except (UserError, ValueError, TypeError):
                raise UserError(f"{path}: row {row_number}: experiment/uuid/z_first/z_last unreadable") from None
            truth.setdefault(key, []).append(extent)
    return truth


def evaluate(reports: list[dict], truth: dict[tuple[str, str], list[tuple[int, int]]]) -> dict:
    """Series-level detection / false-alarm rates and z-IoU of flagged ranges with the true extents.

    A CT-GAN scan with tampers.csv rows is tampered; every other series (untampered CT-GAN scans,
    LIDC) is untampered. IoU uses the ranges that count for the verdict, in file numbers.
    """
    rows, ious, hits, tampers = [], [], 0, 0
    for report in reports:
        key = tuple(report["scan"].split("/", 1)) if report["scan"] else None
        extents = truth.get(key, []) if key else []
        tampered = bool(extents)
        suspicious = report["verdict"] == "suspicious"
        flagged = [(r["first"], r["last"]) for r in report["ranges"] if r["counts"]]
        row = {"series_id": report["series_id"], "scan": report["scan"], "tampered": tampered,
               "suspicious": suspicious, "true_ranges": [list(e) for e in extents], "iou": None}
        if tampered and report["slice_numbering"] == "file number":
            row["iou"] = round(z_iou(flagged, extents), 6)
            ious.append(row["iou"])
            tampers += len(extents)
            hits += tamper_hits(flagged, extents)
        rows.append(row)
    level = scan_level([row["tampered"] for row in rows], [row["suspicious"] for row in rows])
    return {
        **{key: level[key] for key in ("series", "tampered", "untampered", "detected", "false_alarms",
                                        "detection_rate", "false_alarm_rate")},
        "mean_iou": float(np.mean(ious)) if ious else None,
        "tamper_hit_rate": hits / tampers if tampers else None,
        "per_series": rows,
    }


# -- the whole scan -----------------------------------------------------------------------------
def scan(path: str | os.PathLike, scorer: Scorer, threshold: float = DEFAULT_THRESHOLD,
         min_slices: int = DEFAULT_MIN_SLICES, batch_size: int = 16, truth_dir: str | None = None,
         model_label: str = "", progress: bool = False, notes: Callable[[str], None] | None = None,
         keep_series: dict | None = None, found: tuple[list[SeriesSource], list[dict]] | None = None) -> dict:
    """Scan every series under ``path``; the report dict (see :func:`report_schema`).

    UserError when nothing could be scored (no series, or every series rejected). ``keep_series``
    (optional dict) receives series_id → (series, sorted indices of the scored slices) for plots;
    ``found`` is what :func:`find_series` returned for ``path`` when the caller looked already.
    """
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold must be in [0, 1], got {threshold}")
    if min_slices < 1:
        raise UserError(f"--min-slices must be ≥ 1, got {min_slices}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be ≥ 1, got {batch_size}")
    truth = load_truth(truth_dir) if truth_dir else None
    say = notes or (lambda text: None)
    sources, rejected = found if found is not None else find_series(path)
    rejected = list(rejected)
    reports = []
    for number, source in enumerate(sources, start=1):
        name = source.scan or source.display
        label = f"{number}/{len(sources)}" + (f" {source.scan}" if source.scan else "")
        try:
            series = source.opener()
            scored = score_series(series, scorer, batch_size, progress, label=label)
        except DICOMError as exc:
            if len(sources) == 1:
                raise
            rejected.append({"folder": source.display, "reason": str(exc)})
            say(f"{name}: rejected: {exc}")
            continue
        report = series_report(source, series, scored, threshold, min_slices)
        if report["resampled"]:
            say(f"{name}: {report['resampled']}")
        if report["skipped"]:
            say(f"{name}: {len(report['skipped'])} slice file(s) skipped, e.g. "
                f"{report['skipped'][0]['file']}: {report['skipped'][0]['reason']}")
        reports.append(report)
        if keep_series is not None:
            keep_series[report["series_id"]] = (series, scored["indices"])
    if not reports:
        first = f" (e.g. {rejected[0]['folder']}: {rejected[0]['reason']})" if rejected else ""
        raise UserError(f"{path}: no series could be scored{first}")
    return {
        "medfake_scan_version": REPORT_VERSION,
        "model": model_label,
        "runtime": scorer.name,
        "threshold": float(threshold),
        "min_slices": int(min_slices),
        "rule": verdict_rule(threshold, min_slices),
        "series": reports,
        "rejected": rejected,
        "evaluation": evaluate(reports, truth) if truth is not None else None,
    }


# -- CLI ----------------------------------------------------------------------------------------
def _window(text: str) -> tuple[float, float]:
    try:
        center, width = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CENTER,WIDTH in HU such as -600,1500, got {text!r}") from None
    if width <= 0:
        raise argparse.ArgumentTypeError(f"window width must be > 0 HU, got {width:g}")
    return center, width


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from medfake.core.config import WindowConfig

    parser.add_argument("path", metavar="PATH", help="series folder, DICOM file, or a CT-GAN / LIDC-IDRI root")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"models:/ or runs:/ URI, run id, MLflow model folder, .keras/.onnx/.xml file (default {DEFAULT_MODEL})")
    parser.add_argument("--endpoint", default="", metavar="URL",
                        help="score through a running `mlflow models serve` at URL instead of loading --model")
    parser.add_argument("--runtime", default="auto", choices=RUNTIME_CHOICES,
                        help="inference runtime (default auto: the fastest installed — openvino, onnx, then keras)")
    parser.add_argument("--precision", default=CHECKED, choices=PRECISION_CHOICES,
                        help="inference precision (default checked: bfloat16 only where the detector's train run measured "
                             "max |Δp| ≤ 0.01 against Keras float32 on its test slices, else float32; "
                             "auto = the runtime's fastest)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="P(fake) that flags a slice (default 0.5)")
    parser.add_argument("--min-slices", type=int, default=DEFAULT_MIN_SLICES,
                        help="consecutive flagged slices that make a series suspicious (default 2)")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per inference batch (default 16)")
    parser.add_argument("--image-size", type=int, default=0,
                        help="the model's input size; needed with --endpoint when --model's signature is not at hand")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the endpoint per batch")
    parser.add_argument("--json", default="", metavar="FILE", help="write the report as JSON to FILE ('-' for stdout)")
    parser.add_argument("--plot", default="", metavar="PNG",
                        help="score profile plot(s); with several series PNG-<scan>.png each")
    parser.add_argument("--window", type=_window, default=(WindowConfig().center, WindowConfig().width),
                        metavar="C,W", help="display window of the plot's thumbnails in HU (default -600,1500)")
    parser.add_argument("--explain", default="", metavar="DIR", help=METHOD_HELP)
    parser.add_argument("--profile", action="store_true", help="print every slice's score (default: only for one series)")
    parser.add_argument("--truth", default="", metavar="DIR",
                        help="phantom ground truth (tampers.csv): report detection / false-alarm rate and z-IoU")
    parser.add_argument("--mlflow", action="store_true", help="log the scan (rates, report, plots) as an MLflow run")
    parser.add_argument("--experiment", default="medfake-scan", help="MLflow experiment for --mlflow (default medfake-scan)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _endpoint_size(args: argparse.Namespace) -> int | None:
    """The model's input size for --endpoint: --image-size, else --model's signature if it resolves."""
    if args.image_size:
        return args.image_size
    try:
        kind, location = resolve_model(args.model)
        return size_from_signature(mlflow_model_info(location)) if kind == "mlflow" else None
    except UserError:
        return None


def run(args: argparse.Namespace) -> int:
    endpoint = args.endpoint.strip()
    if args.image_size < 0:
        raise UserError(f"--image-size must be > 0, got {args.image_size}")

    found = find_series(args.path)  # a wrong PATH is reported before any model is loaded

    if endpoint:
        size = _endpoint_size(args)
        if size is None:
            note("the model's input size is unknown (no --image-size, no signature): slices are sent at their own size")
        scorer = load_scorer(args.model, endpoint=endpoint, image_size=size, timeout=args.timeout)
        model_label = f"endpoint {endpoint}"
    else:
        scorer = load_scorer(args.model, runtime=args.runtime, precision=args.precision,
                             image_size=args.image_size or None, notes=note)
        model_label = args.model
    opened: dict = {}
    report = scan(args.path, scorer, threshold=args.threshold, min_slices=args.min_slices, batch_size=args.batch_size,
                  truth_dir=args.truth or None, model_label=model_label, progress=not args.quiet, notes=note,
                  keep_series=opened if args.plot or args.explain else None, found=found)
    overlays = explain_ranges(report, opened, explainer_for(args.model, scorer, bool(endpoint), args.window),
                              Path(args.explain), args.window) if args.explain else []
    plot_files: list[Path] = []
    if args.plot:
        plot_files = write_plots(report, Path(args.plot), opened, args.window)
    if args.json == "-":
        print(json.dumps(report, indent=1))
    else:
        print(format_report(report, profile=True if args.profile else None))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
            print(f"report written to {args.json}")
    for path in plot_files:
        print(f"plot written to {path}", file=sys.stderr if args.json == "-" else sys.stdout)
    if args.explain:
        print(f"{len(overlays)} peak-slice overlay(s) written to {args.explain}", file=sys.stderr if args.json == "-" else sys.stdout)
    if args.mlflow:
        run_id = log_to_mlflow(report, args.experiment, plot_files, model_label)
        print(f"logged as MLflow run {run_id} in experiment '{args.experiment}'",
              file=sys.stderr if args.json == "-" else sys.stdout)
    return 0

