"""Summarise a DICOM file or series folder: geometry, HU range, ordering and the problems found.

Reads every header but decodes only the first, middle and last slices for the HU range, so it
stays fast on large series. Prints no patient data (no name, ID, dates, institution).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from medfake.io.pixels import transfer_syntax_name
from medfake.io.series import DICOMSeries

ORDERING_TEXT = {
    "position": "ImagePositionPatient along the slice normal",
    "instance": "InstanceNumber (no usable ImagePositionPatient)",
    "file": "file name (no ImagePositionPatient nor InstanceNumber)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="a DICOM file or a folder holding one CT series")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def sample_indices(count: int) -> list[int]:
    """First, middle and last slice (fewer for short series)."""
    return sorted({0, count // 2, count - 1}) if count else []


def _rounded(value: float | None, digits: int = 3) -> float | None:
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), digits)


def summarize(series: DICOMSeries) -> dict:
    """A JSON-ready summary of a series; holds no patient data."""
    sampled = sample_indices(len(series))
    hu = series.read_hu(sampled)
    steps = np.abs(np.diff(series.slice_positions))
    finite_steps = steps[np.isfinite(steps)] if steps.size else steps
    file_order = series.file_order
    return {
        "path": str(series.source),
        "modality": series.modality,
        "slices": len(series),
        "rows": series.rows,
        "columns": series.columns,
        "pixel_spacing_mm": list(series.pixel_spacing) if series.pixel_spacing else None,
        "slice_spacing_mm": {
            "median": _rounded(series.spacing),
            "min": _rounded(float(finite_steps.min())) if finite_steps.size else None,
            "max": _rounded(float(finite_steps.max())) if finite_steps.size else None,
        },
        "hu_range": {
            "min": _rounded(float(hu.min()), 1),
            "max": _rounded(float(hu.max()), 1),
            "sampled_slices": sampled,
        },
        "transfer_syntax": transfer_syntax_name(series.transfer_syntax),
        "ordering": series.ordering,
        "file_order": file_order,
        "file_order_agrees": None if file_order is None or series.ordering != "position" else file_order != "mixed",
        "problems": list(series.problems),
        "skipped": [{"file": name, "reason": reason} for name, reason in series.skipped],
    }


def _spacing_text(spacing: dict) -> str:
    if spacing["median"] is None:
        return "unknown (no slice positions)"
    return f"{spacing['median']:g} mm (min {spacing['min']:g}, max {spacing['max']:g})"


def _file_order_text(summary: dict) -> str:
    if summary["file_order"] is None:
        return "file names are not numbers"
    if summary["file_order_agrees"] is None:
        return f"file numbers run {summary['file_order']} (not checked against positions)"
    if summary["file_order_agrees"]:
        return f"file numbers follow the position order ({summary['file_order']})"
    return "file numbers DO NOT follow the position order"


def format_summary(summary: dict) -> str:
    """The human-readable report printed by ``medfake inspect``."""
    spacing = summary["pixel_spacing_mm"]
    hu = summary["hu_range"]
    lines = [
        f"path             {summary['path']}",
        f"modality         {summary['modality']}",
        f"slices           {summary['slices']}",
        f"size             {summary['rows']} × {summary['columns']}",
        f"pixel spacing    {spacing[0]:g} × {spacing[1]:g} mm" if spacing else "pixel spacing    unknown",
        f"slice spacing    {_spacing_text(summary['slice_spacing_mm'])}",
        f"HU range         {hu['min']:g} … {hu['max']:g} (slices {', '.join(map(str, hu['sampled_slices']))} sampled)",
        f"transfer syntax  {summary['transfer_syntax']}",
        f"ordering         {summary['ordering']}: {ORDERING_TEXT[summary['ordering']]}",
        f"file order       {_file_order_text(summary)}",
        f"problems         {'none' if not summary['problems'] else len(summary['problems'])}",
    ]
    lines += [f"  - {problem}" for problem in summary["problems"]]
    lines.append(f"skipped files    {'none' if not summary['skipped'] else len(summary['skipped'])}")
    lines += [f"  - {item['file']}: {item['reason']}" for item in summary["skipped"]]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    series = DICOMSeries.open(Path(args.path))
    summary = summarize(series)
    print(json.dumps(summary, indent=2, ensure_ascii=False) if args.json else format_summary(summary))
    return 0
