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
import hashlib
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medfake.core.errors import DICOMError, UserError

DEFAULT_MODEL = "models:/medfake-detector@champion"
DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_SLICES = 2
EXPORT_CACHE = Path(".medfake") / "exports"
REPORT_VERSION = 1
RUNTIME_CHOICES = ("auto", "keras", "onnx", "openvino")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_TRUTH_COLUMNS = ("experiment", "uuid", "z_first", "z_last")


# -- what to scan ----------------------------------------------------------------------------
@dataclass
class SeriesSource:
    """One series to scan: how to open it and how to name it to the user."""

    folder: Path                     # the series folder (or the file's folder)
    display: str                     # folder relative to PATH, shown on the terminal only
    scan: str | None                 # CT-GAN "EXP1/1280" (the data set's own scan number), else None
    opener: Callable[[], Any]        # → DICOMSeries


def ctgan_key(folder: Path) -> tuple[str, str] | None:
    """(experiment, uuid) when ``folder`` is a scan folder of a CT-GAN layout, e.g. EXP1_blind/1280."""
    from medfake.data import ctgan

    if not folder.name.isdigit() or folder.parent.parent.name not in ctgan.LAYOUTS:
        return None
    try:
        return ctgan.normalize_experiment(folder.parent.name), folder.name
    except UserError:
        return None


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


def _is_series_folder(folder: Path) -> bool:
    """A folder of files and no sub-folders is one series; a folder with sub-folders is a root."""
    entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    return not any(entry.is_dir() for entry in entries)


def find_series(path: str | os.PathLike) -> tuple[list[SeriesSource], list[dict]]:
    """The series under PATH and the (folder, reason) of what was left out while looking."""
    from medfake.io.series import DICOMSeries

    root = Path(path)
    if not root.exists():
        raise UserError(f"{root}: no such file or folder")
    if root.is_file() or _is_series_folder(root):
        folder = root.parent if root.is_file() else root
        series = DICOMSeries.open(root)  # headers only; a rejected series is reported before any model loads
        return [SeriesSource(folder, str(root), _scan_name(ctgan_key(folder)), lambda: series)], []
    from medfake.data import ctgan

    try:
        scans = ctgan.find_scans(root)
    except UserError:
        scans = {}
    if scans:
        sources = [
            SeriesSource(folder, _relative(folder, root), _scan_name(key), (lambda f=folder: DICOMSeries.open(f)))
            for key, folder in scans.items()
        ]
        return sources, []
    from medfake.data import lidc

    found = lidc.walk(root)
    sources = [
        SeriesSource(ref.folder, _relative(ref.folder, root), _scan_name(ctgan_key(ref.folder)),
                     (lambda r=ref: lidc.open_series(r)))
        for ref in found.series
    ]
    left_out = [{"folder": where, "reason": reason} for where, reason in found.skipped]
    if not sources:
        reasons = f" ({left_out[0]['folder']}: {left_out[0]['reason']})" if left_out else ""
        raise UserError(f"{root}: no CT series found{reasons}")
    return sources, left_out


def _scan_name(key: tuple[str, str] | None) -> str | None:
    return f"{key[0]}/{key[1]}" if key else None


# -- how to score ----------------------------------------------------------------------------
@dataclass
class Scorer:
    """Anything that maps HU slices (n, S, S, 1) float32 to P(fake) (n,)."""

    name: str                                   # e.g. "openvino-float32", "endpoint"
    predict: Callable[[np.ndarray], np.ndarray]
    input_size: int | None                      # S the model takes; None: whatever the slices are


def resolve_model(text: str) -> tuple[str, str]:
    """(kind, location) of ``--model``: ("mlflow", URI) or ("file", path)."""
    text = (text or DEFAULT_MODEL).strip()
    if text.startswith(("models:/", "runs:/")):
        return "mlflow", text
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir():
            if (path / "MLmodel").is_file():
                return "mlflow", str(path.resolve())
            raise UserError(f"--model {text}: folder without an MLmodel file (expected an MLflow model folder)")
        return "file", str(path)
    if _RUN_ID.match(text):
        return "mlflow", f"runs:/{text}/model"
    raise UserError(f"--model {text}: not a models:/ or runs:/ URI, an MLflow run id, nor an existing model file or folder")


def _mlflow_model_info(uri: str):
    import mlflow
    from mlflow.exceptions import MlflowException

    from medfake.core import tracking

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(tracking.DEFAULT_TRACKING_URI)
    try:
        return mlflow.models.get_model_info(uri)
    except MlflowException as exc:
        message = " ".join(str(exc).split())
        alias = re.match(r"^models:/([^@/]+)@(.+)$", uri)
        if alias and "alias" in message.lower() and "not found" in message.lower():
            raise UserError(f"--model {uri}: registered model {alias.group(1)} has no alias '{alias.group(2)}' "
                            f"(run `medfake promote` first, or give a run id or model path)") from None
        raise UserError(f"--model {uri}: {message[:200]}") from None
    except OSError as exc:
        raise UserError(f"--model {uri}: cannot read the model ({exc})") from None


def _size_from_signature(info) -> int | None:
    signature = getattr(info, "signature", None)
    if signature is None:
        return None
    try:
        shape = signature.inputs.inputs[0].shape
    except (AttributeError, IndexError):
        return None
    return int(shape[1]) if shape is not None and len(shape) >= 3 and shape[1] and shape[1] > 0 else None


def _exported(model, model_uuid: str, runtime: str) -> Path:
    """The ONNX/OpenVINO export of a registered Keras detector, cached under .medfake/exports/<model uuid>."""
    from medfake.models import runtime as rt

    folder = EXPORT_CACHE / model_uuid
    target = folder / f"{rt.EXPORT_STEM}{rt.RUNTIMES[runtime][1]}"
    if not target.is_file():
        staging = Path(tempfile.mkdtemp(prefix=f"{model_uuid}-", dir=_ensure(EXPORT_CACHE)))
        written = _export(model, staging, runtime)
        folder.mkdir(parents=True, exist_ok=True)
        for item in sorted(staging.iterdir(), key=lambda p: p.suffix == written.suffix):  # model file last
            os.replace(item, folder / item.name)
        staging.rmdir()
    return target


def _export(model, folder: Path, runtime: str) -> Path:
    from medfake.models import runtime as rt

    size = int(model.input_shape[1])
    model.predict_on_batch(np.zeros((1, size, size, 1), np.float32))  # Keras exports only models called once
    return rt.export_detector(model, folder, (runtime,))[runtime]


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _file_input_size(loaded) -> int | None:
    """S of an ONNX session's or OpenVINO compiled model's input (n, S, S, 1), when static."""
    source = loaded.source
    try:
        if hasattr(source, "get_inputs"):
            shape = source.get_inputs()[0].shape
        else:
            shape = list(source.input(0).get_partial_shape())
            shape = [d.get_length() if d.is_static else None for d in shape]
        return int(shape[1]) if isinstance(shape[1], int) else None
    except Exception:  # noqa: BLE001 - introspection only; --image-size covers the rest
        return None


def load_scorer(model: str, runtime: str = "auto", precision: str = "float32", endpoint: str | None = None,
                image_size: int | None = None, timeout: float = 120.0) -> Scorer:
    """A scorer for ``--model``/``--endpoint``: the fastest installed runtime unless one is named."""
    if runtime not in RUNTIME_CHOICES:
        raise UserError(f"--runtime must be one of {', '.join(RUNTIME_CHOICES)}, got {runtime!r}")
    if endpoint:
        from medfake.inference import serving

        serving.base_url(endpoint)  # validates the URL
        return Scorer("endpoint", lambda batch: serving.score(endpoint, batch, timeout), image_size)
    from medfake.models import runtime as rt

    kind, location = resolve_model(model)
    if kind == "file":
        if Path(location).suffix.lower() == rt.RUNTIMES["keras"][1]:
            import keras

            import medfake.models.detector  # noqa: F401 - registers the detector's own layers for loading
            try:
                keras_model = keras.saving.load_model(location)
            except (OSError, ValueError) as exc:
                raise UserError(f"--model {location}: not a loadable Keras model ({' '.join(str(exc).split())[:160]})") from None
            return _keras_scorer(keras_model, None, runtime, precision, image_size)
        loaded = rt.load_runtime(location, runtime=runtime, precision=precision)
        return Scorer(loaded.name, loaded.predict, image_size or _file_input_size(loaded))
    info = _mlflow_model_info(location)
    if "keras" not in info.flavors:
        if runtime not in ("auto", "keras"):
            raise UserError(f"--model {location} is not a Keras model (flavours: {', '.join(info.flavors)}); "
                            f"it runs as an MLflow pyfunc only, not with runtime {runtime}")
        import mlflow

        pyfunc = mlflow.pyfunc.load_model(location)
        size = image_size or _size_from_signature(info)
        return Scorer("pyfunc", lambda batch: np.asarray(pyfunc.predict(batch), np.float32).reshape(-1), size)
    import mlflow

    import medfake.models.detector  # noqa: F401 - registers the detector's own layers for loading
    return _keras_scorer(mlflow.keras.load_model(location), info.model_uuid, runtime, precision, image_size)


def _keras_scorer(keras_model, model_uuid: str | None, runtime: str, precision: str, image_size: int | None) -> Scorer:
    """A Keras detector on the chosen runtime ("auto": the fastest installed), exported when needed."""
    from medfake.models import runtime as rt

    size = image_size or int(keras_model.input_shape[1])
    chosen = rt.available_runtimes()[0] if runtime == "auto" else runtime
    if chosen == "keras":
        loaded = rt.load_runtime(keras_model, runtime="keras", precision=precision)
    elif model_uuid:
        loaded = rt.load_runtime(_exported(keras_model, model_uuid, chosen), precision=precision)
    else:  # a local .keras file: export, load into memory, drop the files
        with tempfile.TemporaryDirectory(prefix="medfake-export-", ignore_cleanup_errors=True) as folder:
            loaded = rt.load_runtime(_export(keras_model, Path(folder), chosen), precision=precision)
    return Scorer(loaded.name, loaded.predict, size)


# -- scoring a series -------------------------------------------------------------------------
def suspicious_ranges(scores: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Inclusive (first, last) positions of runs of consecutive scores ≥ threshold."""
    above = np.asarray(scores, dtype=np.float64) >= threshold
    edges = np.diff(np.concatenate(([0], above.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return list(zip(starts.tolist(), ends.tolist()))


def verdict_rule(threshold: float, min_slices: int) -> str:
    return (f"suspicious when at least {min_slices} consecutive slice{'s' if min_slices != 1 else ''} "
            f"score P(fake) ≥ {threshold:g}; clean otherwise")


def _profile_order(series) -> tuple[list[int], str]:
    """Sorted-series indices in the order the profile runs, and how its slices are numbered.

    Slices run along z; when file numbers run monotonically along z the profile follows file
    numbers (CT-GAN: file number = label ``slice``), else it is numbered by z index.
    """
    indices = list(range(len(series)))
    order = series.file_order
    if order == "descending":
        return indices[::-1], "file number"
    if order == "ascending":
        return indices, "file number"
    return indices, "z index"


def _read_batch(series, indices: list[int]) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """HU of ``indices``; slices that fail to decode are left out and returned with the reason."""
    try:
        return series.read_hu(indices), list(indices), []
    except DICOMError:
        pass
    good, images, bad = [], [], []
    for index in indices:
        try:
            images.append(series.read_hu([index])[0])
            good.append(index)
        except DICOMError as exc:
            bad.append((index, str(exc)))
    stacked = np.stack(images) if images else np.empty((0, series.rows, series.columns), np.float32)
    return stacked, good, bad


def score_series(series, scorer: Scorer, batch_size: int = 16, progress: bool = False, label: str = "") -> dict:
    """Score every readable slice in profile order: scores, slice numbers, file names, skipped slices."""
    from tqdm import tqdm

    from medfake.io.transforms import resize

    order, numbering = _profile_order(series)
    size = scorer.input_size
    resample = None
    if size and (series.rows, series.columns) != (size, size):
        resample = f"slices are {series.rows}×{series.columns}, the model takes {size}×{size}: resampled"
    scores, kept, skipped = [], [], []
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc=f"scan {label}".strip(), unit="batch", disable=not progress, leave=False):
        hu, good, bad = _read_batch(series, batch)
        skipped += [(series.paths[i].name, reason) for i, reason in bad]
        if not good:
            continue
        if resample:
            hu = resize(hu, size)
        scores.append(np.asarray(scorer.predict(hu[..., None]), dtype=np.float32).reshape(-1))
        kept += good
    if not kept:
        raise DICOMError(f"{series.source}: no slice of the series could be decoded (e.g. {skipped[0][1]})")
    if numbering == "file number":
        numbers = [series.file_numbers[i] for i in kept]
    else:
        position = {index: z for z, index in enumerate(order)}
        numbers = [position[i] for i in kept]
    return {
        "scores": np.concatenate(scores),
        "slices": [int(n) for n in numbers],
        "files": [series.paths[i].name for i in kept],
        "indices": kept,
        "numbering": numbering,
        "resampled": resample,
        "decode_skipped": skipped,
    }


def series_report(source: SeriesSource, series, scored: dict, threshold: float, min_slices: int) -> dict:
    """The JSON-ready result of one series (schema in :func:`report_schema`)."""
    from medfake.io.privacy import deidentify

    scores = scored["scores"]
    slices = scored["slices"]
    ranges = []
    for first, last in suspicious_ranges(scores, threshold):
        peak = first + int(np.argmax(scores[first : last + 1]))
        ranges.append({
            "first": slices[first], "last": slices[last], "slices": last - first + 1,
            "peak_slice": slices[peak], "peak_score": round(float(scores[peak]), 6),
            "counts": last - first + 1 >= min_slices,
        })
    suspicious = any(r["counts"] for r in ranges)
    skipped = [{"file": name, "reason": reason} for name, reason in list(series.skipped) + scored["decode_skipped"]]
    top = int(np.argmax(scores))
    return {
        "series_id": deidentify(series.series_uid),
        "scan": source.scan,
        "folder": source.display,
        "slices_scored": int(len(scores)),
        "slice_numbering": scored["numbering"],
        "verdict": "suspicious" if suspicious else "clean",
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
        "range": {"first": int, "last": int, "slices": int, "peak_slice": int, "peak_score": float, "counts": bool},
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


def _slice_set(extents) -> set[int]:
    return {z for first, last in extents for z in range(min(first, last), max(first, last) + 1)}


def z_iou(flagged: list[tuple[int, int]], true: list[tuple[int, int]]) -> float:
    """Intersection over union, in slices along z, of flagged ranges and true tamper extents."""
    a, b = _slice_set(flagged), _slice_set(true)
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def evaluate(reports: list[dict], truth: dict[tuple[str, str], list[tuple[int, int]]]) -> dict:
    """Series-level detection / false-alarm rates and z-IoU of flagged ranges with the true extents.

    A CT-GAN scan with tampers.csv rows is tampered; every other series (untampered CT-GAN scans,
    LIDC) is untampered. IoU uses the ranges that count for the verdict, in file numbers.
    """
    rows, ious, hits, tampers = [], [], 0, 0
    tp = fp = positives = negatives = 0
    for report in reports:
        key = tuple(report["scan"].split("/", 1)) if report["scan"] else None
        extents = truth.get(key, []) if key else []
        tampered = bool(extents)
        suspicious = report["verdict"] == "suspicious"
        flagged = [(r["first"], r["last"]) for r in report["ranges"] if r["counts"]]
        row = {"series_id": report["series_id"], "scan": report["scan"], "tampered": tampered,
               "suspicious": suspicious, "true_ranges": [list(e) for e in extents], "iou": None}
        if tampered:
            positives += 1
            tp += suspicious
            if report["slice_numbering"] == "file number":
                row["iou"] = round(z_iou(flagged, extents), 6)
                ious.append(row["iou"])
                for extent in extents:
                    tampers += 1
                    hits += bool(_slice_set([extent]) & _slice_set(flagged))
        else:
            negatives += 1
            fp += suspicious
        rows.append(row)
    return {
        "series": len(reports), "tampered": positives, "untampered": negatives,
        "detected": tp, "false_alarms": fp,
        "detection_rate": tp / positives if positives else None,
        "false_alarm_rate": fp / negatives if negatives else None,
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


# -- output -----------------------------------------------------------------------------------
def _range_text(r: dict) -> str:
    span = f"{r['first']}" if r["first"] == r["last"] else f"{r['first']}–{r['last']}"
    return f"{span} ({r['slices']} slice{'s' if r['slices'] != 1 else ''}, peak {r['peak_score']:.3f} at {r['peak_slice']})"


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
    parser.add_argument("--precision", default="float32", choices=("auto", "float32", "bfloat16", "float16"),
                        help="inference precision (default float32: scores equal Keras's within 1e-3; auto = the runtime's fastest)")
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
        return _size_from_signature(_mlflow_model_info(location)) if kind == "mlflow" else None
    except UserError:
        return None


def run(args: argparse.Namespace) -> int:
    endpoint = args.endpoint.strip()
    if args.image_size < 0:
        raise UserError(f"--image-size must be > 0, got {args.image_size}")

    def note(text: str) -> None:
        print(f"medfake scan: note: {text}", file=sys.stderr)

    found = find_series(args.path)  # a wrong PATH is reported before any model is loaded

    if endpoint:
        size = _endpoint_size(args)
        if size is None:
            note("the model's input size is unknown (no --image-size, no signature): slices are sent at their own size")
        scorer = load_scorer(args.model, endpoint=endpoint, image_size=size, timeout=args.timeout)
        model_label = f"endpoint {endpoint}"
    else:
        scorer = load_scorer(args.model, runtime=args.runtime, precision=args.precision,
                             image_size=args.image_size or None)
        model_label = args.model
    opened: dict = {}
    report = scan(args.path, scorer, threshold=args.threshold, min_slices=args.min_slices, batch_size=args.batch_size,
                  truth_dir=args.truth or None, model_label=model_label, progress=not args.quiet, notes=note,
                  keep_series=opened if args.plot else None, found=found)
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
    if args.mlflow:
        run_id = log_to_mlflow(report, args.experiment, plot_files, model_label)
        print(f"logged as MLflow run {run_id} in experiment '{args.experiment}'",
              file=sys.stderr if args.json == "-" else sys.stdout)
    return 0

