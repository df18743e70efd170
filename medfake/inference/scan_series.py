"""Which series ``medfake scan`` reads under PATH, and how one series is scored slice by slice.

PATH is a series folder, one DICOM file, a CT-GAN root (every scan) or any other root such as
LIDC-IDRI (every CT series found by SeriesInstanceUID). Slices are numbered by file number when
file numbers run along z (CT-GAN's ``0.dcm … N-1.dcm``, what its labels' ``slice`` means), so a
user can open the slice; else by z index.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medfake.core.errors import DICOMError, UserError
from medfake.inference.loading import Scorer


# -- what to scan -------------------------------------------------------------------------------
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


# -- scoring a series -------------------------------------------------------------------------
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
