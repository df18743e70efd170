"""What ``medfake scan`` shows and keeps: the terminal table, score-profile plots, an MLflow run.

What is logged to MLflow is de-identified: no folder names (they can be patient IDs) nor scan
names, plots under the salted series id.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


# -- terminal -----------------------------------------------------------------------------------
def _range_text(r: dict) -> str:
    span = f"{r['first']}" if r["first"] == r["last"] else f"{r['first']}–{r['last']}"
    where = f" (x {r['peak_xy'][0]:.0f}, y {r['peak_xy'][1]:.0f})" if r.get("peak_xy") else ""  # --explain
    return f"{span} ({r['slices']} slice{'s' if r['slices'] != 1 else ''}, peak {r['peak_score']:.3f} at {r['peak_slice']}{where})"


def format_report(report: dict, profile: bool | None = None) -> str:
    """The terminal table: one line per series, its ranges, optionally the per-slice profile."""
    series = report["series"]
    show_profile = len(series) == 1 if profile is None else profile
    lines = [f"model {report['model']} · runtime {report['runtime']} · rule: {report['rule']}",
             f"{'series':<28} {'slices':>6}  {'max P(fake)':>11}  {'verdict':<10} suspicious ranges (≥ threshold)"]
    for s in series:
        name = s["scan"] or f"id {s['series_id']}"
        ranges = "; ".join(_range_text(r) + ("" if r["counts"] else " [too short]") for r in s["ranges"]) or "none"
        lines.append(f"{name:<28} {s['slices_scored']:>6}  {s['max_score']:>11.3f}  {s['verdict'].upper():<10} {ranges}")
        if show_profile:
            lines.append(f"  profile (slice: P(fake)), numbered by {s['slice_numbering']}:")
            rows = s["scores"]
            for start in range(0, len(rows), 8):
                chunk = rows[start : start + 8]
                lines.append("    " + "  ".join(f"{r['slice']:>4}: {r['score']:.3f}" for r in chunk))
        for item in s["skipped"][:5]:
            lines.append(f"  skipped {item['file']}: {item['reason']}")
        if len(s["skipped"]) > 5:
            lines.append(f"  … {len(s['skipped']) - 5} more skipped")
    for s in series:
        if not s["scan"]:
            lines.append(f"id {s['series_id']} is {s['folder']}")
    for item in report["rejected"]:
        lines.append(f"rejected {item['folder']}: {item['reason']}")
    suspicious = sum(s["verdict"] == "suspicious" for s in series)
    lines.append(f"{len(series)} series scanned, {suspicious} suspicious.")
    ev = report.get("evaluation")
    if ev:
        def pct(value):
            return "n/a" if value is None else f"{100 * value:.1f} %"

        iou = "n/a" if ev["mean_iou"] is None else f"{ev['mean_iou']:.3f}"
        lines.append(
            f"Against the ground truth: detection rate {pct(ev['detection_rate'])} ({ev['detected']}/{ev['tampered']} "
            f"tampered series), false-alarm rate {pct(ev['false_alarm_rate'])} ({ev['false_alarms']}/{ev['untampered']} "
            f"untampered), mean z-IoU of flagged ranges with true extents {iou}, tampers hit {pct(ev['tamper_hit_rate'])}."
        )
    return "\n".join(lines)


def _plot_path(base: Path, report: dict, many: bool) -> Path:
    if not many:
        return base
    name = (report["scan"] or report["series_id"]).replace("/", "-")
    return base.with_name(f"{base.stem}-{name}{base.suffix or '.png'}")


def write_plots(report: dict, base: Path, sources: dict[str, Any], window: tuple[float, float],
                top: int = 4) -> list[Path]:
    """Score along z per series, flagged ranges shaded, the top slices shown in ``window`` (C, W)."""
    from medfake.core import plots
    from medfake.io.transforms import window_uint8

    written = []
    many = len(report["series"]) > 1
    for s in report["series"]:
        slices = np.array([r["slice"] for r in s["scores"]])
        values = np.array([r["score"] for r in s["scores"]], dtype=np.float64)
        if s["slice_numbering"] == "file number" and slices.min() >= 0 and slices.max() < 4 * len(slices) + 16:
            profile = np.full(int(slices.max()) + 1, np.nan)
            profile[slices] = values               # x axis = file number, gaps where slices were skipped
            spans = [(r["first"], r["last"]) for r in s["ranges"] if r["counts"]]
        else:
            profile = values
            position = {int(n): i for i, n in enumerate(slices)}
            spans = [(position[r["first"]], position[r["last"]]) for r in s["ranges"] if r["counts"]]
        thumbnails = {}
        series, indices = sources.get(s["series_id"], (None, None))
        if series is not None:
            best = np.argsort(-values, kind="stable")[:top]
            for k in best:
                thumbnails[int(slices[k])] = window_uint8(series.read_hu([indices[k]])[0], *window)
        name = s["scan"] or s["series_id"]
        title = f"{name}: P(fake) by {s['slice_numbering']} — {s['verdict']}"
        written.append(plots.score_profile(profile, spans, _plot_path(base, s, many), report["threshold"],
                                           thumbnails=thumbnails, title=title))
    return written


def tracked_report(report: dict) -> dict:
    """The report as logged to MLflow: no folder names (they can be patient IDs) nor scan names."""
    clean = json.loads(json.dumps(report))
    for s in clean["series"]:
        s.pop("folder", None)
        s.pop("scan", None)
        s["problems"] = [f"{len(s['problems'])} reader problems (see the terminal output)"] if s["problems"] else []
        s["skipped"] = [{"file": item["file"], "reason": "skipped"} for item in s["skipped"]]
    clean["rejected"] = [{"folder": "-", "reason": "rejected"} for _ in clean["rejected"]]
    if clean.get("evaluation"):
        for row in clean["evaluation"]["per_series"]:
            row.pop("scan", None)
    return clean


def log_to_mlflow(report: dict, experiment: str, plot_files: list[Path], model_label: str) -> str:
    """A ``scan`` run: parameters, rates as metrics, the report (de-identified) and plots as artifacts."""
    import mlflow

    from medfake.core import tracking

    digest = hashlib.sha256(model_label.encode()).hexdigest()[:8]
    with tracking.run(experiment, f"scan-{digest}", "scan") as active:
        # "scan." keys: under `mlflow run` the entry point's own parameters (model, runtime, …) are logged already
        tracking.log_params({"scan.model": model_label, "scan.runtime": report["runtime"],
                             "scan.threshold": report["threshold"], "scan.min_slices": report["min_slices"],
                             "scan.series": len(report["series"])})
        metrics = {"series_suspicious": float(sum(s["verdict"] == "suspicious" for s in report["series"])),
                   "series_scanned": float(len(report["series"])),
                   "series_rejected": float(len(report["rejected"]))}
        ev = report.get("evaluation") or {}
        for key in ("detection_rate", "false_alarm_rate", "mean_iou", "tamper_hit_rate"):
            if ev.get(key) is not None:
                metrics[f"scan_{key}"] = float(ev[key])
        mlflow.log_metrics(metrics)
        mlflow.log_text(json.dumps(tracked_report(report), indent=1), "scan/report.json")
        _log_plots(plot_files, report)
        return active.info.run_id


def _log_plots(plot_files: list[Path], report: dict) -> None:
    """Plots under de-identified names (the file names on disk may carry scan numbers)."""
    import shutil

    import mlflow

    with tempfile.TemporaryDirectory(prefix="medfake-scan-") as folder:
        for path, s in zip(plot_files, report["series"]):
            shutil.copy(path, Path(folder) / f"profile-{s['series_id']}.png")
        if plot_files:
            mlflow.log_artifacts(folder, "scan/plots")
