"""LIDC-IDRI (TCIA): find the CT series under a root of any layout.

Old downloads are ``LIDC-IDRI/LIDC-IDRI-dddd/<StudyUID>/<SeriesUID>/*.dcm``; newer ones use free
folder names, and a series may be split over folders. So the tree is walked, each file's header
is read only up to SeriesInstanceUID (0020,000E) — Modality (0008,0060) comes before it — and
files are grouped by SeriesInstanceUID. Only ``Modality == CT`` is kept: some patients also have
CR/DX chest X-ray series, which are reported as skipped.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medfake.core.errors import UserError
from medfake.io.header import HEADER_TAGS, element_text, scan_header
from medfake.io.privacy import deidentify
from medfake.io.series import DICOMSeries

log = logging.getLogger(__name__)

# Files that sit beside DICOM in TCIA downloads (annotations, manifests) and are never images.
NON_DICOM_SUFFIXES = frozenset(
    {".xml", ".txt", ".csv", ".json", ".md", ".html", ".htm", ".pdf", ".png", ".jpg", ".jpeg", ".zip",
     ".gz", ".tsv", ".log", ".py", ".tcia", ".yaml", ".yml"}
)
_SERIES_UID_TAG = HEADER_TAGS["SeriesInstanceUID"]
_MODALITY_TAG = HEADER_TAGS["Modality"]


@dataclass
class LIDCSeriesRef:
    """One CT series found under the root: its UID, its files (any folders), their common folder."""

    series_uid: str
    files: list[Path]
    folder: Path

    def __len__(self) -> int:
        return len(self.files)


@dataclass
class LIDCWalk:
    """What a walk found: CT series, and (folder relative to the root, reason) for what was left out.

    Folder names can be patient IDs (``LIDC-IDRI-0001``): show them to the user, never log them.
    """

    series: list[LIDCSeriesRef] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _series_header(path: Path) -> tuple[str, str]:
    """(SeriesInstanceUID, Modality), reading the header only up to SeriesInstanceUID.

    The struct-based :func:`medfake.io.header.scan_header` handles ordinary files; pydicom's
    ``read_partial`` handles the rest (and raises InvalidDicomError for non-DICOM files).
    """
    wanted = (_MODALITY_TAG, _SERIES_UID_TAG)
    with open(path, "rb") as handle:
        header = scan_header(handle, os.fstat(handle.fileno()).st_size, wanted, stop_after=_SERIES_UID_TAG)
        if header is not None:
            values = header.values
            return element_text(values.get(_SERIES_UID_TAG)), element_text(values.get(_MODALITY_TAG)).upper()
        import pydicom
        from pydicom.filereader import read_partial

        def past_series_uid(tag, vr, length) -> bool:
            return tag > _SERIES_UID_TAG

        handle.seek(0)
        try:
            dataset = read_partial(handle, stop_when=past_series_uid, specific_tags=list(wanted))
        except pydicom.errors.InvalidDicomError:
            handle.seek(0)
            if handle.read(2) not in (b"\x08\x00", b"\x02\x00"):
                raise
            handle.seek(0)
            dataset = read_partial(handle, stop_when=past_series_uid, force=True, specific_tags=list(wanted))
    uid = str(dataset.get("SeriesInstanceUID", "") or "").strip()
    modality = str(dataset.get("Modality", "") or "").strip().upper()
    return uid, modality


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


def walk(root: str | os.PathLike) -> LIDCWalk:
    """Find every CT series under ``root`` (headers only); list what was skipped and why."""
    import pydicom

    root = Path(root)
    if not root.is_dir():
        raise UserError(f"LIDC-IDRI root {root} is not a folder")
    groups: dict[str, list[Path]] = {}
    modalities: dict[str, Counter] = {}
    result = LIDCWalk()
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        folder_path = Path(folder)
        not_dicom, unreadable = 0, Counter()
        for name in sorted(files):
            if name.startswith(".") or Path(name).suffix.lower() in NON_DICOM_SUFFIXES:
                continue
            path = folder_path / name
            try:
                uid, modality = _series_header(path)
            except pydicom.errors.InvalidDicomError:
                not_dicom += 1
                continue
            except Exception as exc:  # damaged files raise many types
                unreadable[type(exc).__name__] += 1
                continue
            if not uid:
                unreadable["no SeriesInstanceUID (0020,000E)"] += 1
                continue
            groups.setdefault(uid, []).append(path)
            modalities.setdefault(uid, Counter())[modality] += 1
        where = _relative(folder_path, root)
        if not_dicom:
            result.skipped.append((where, f"{not_dicom} files are not DICOM"))
        for reason, count in sorted(unreadable.items()):
            result.skipped.append((where, f"{count} files unreadable ({reason})"))
    for uid, paths in groups.items():
        parents = sorted({str(path.parent) for path in paths})
        folder = Path(os.path.commonpath(parents)) if len(parents) > 1 else paths[0].parent
        modality = modalities[uid].most_common(1)[0][0]
        if modality != "CT":
            label = f"{modality} series skipped" if modality else "series without Modality (0008,0060) skipped"
            result.skipped.append((_relative(folder, root), f"{label} ({len(paths)} files): not CT"))
            continue
        result.series.append(LIDCSeriesRef(series_uid=uid, files=sorted(paths), folder=folder))
    result.series.sort(key=lambda ref: (str(ref.folder), ref.series_uid))
    return result


def find_series(root: str | os.PathLike) -> list[LIDCSeriesRef]:
    """The CT series under an LIDC-IDRI root. What was skipped is logged (INFO) under a salted
    hash of its folder, since LIDC folder names are patient IDs; :func:`walk` returns the folders."""
    found = walk(root)
    for where, reason in found.skipped:
        log.info("LIDC-IDRI folder %s: %s", deidentify("lidc-folder", where), reason)
    return found.series


def open_series(ref: LIDCSeriesRef) -> DICOMSeries:
    """Read a found series' headers and sort its slices (pixels are decoded on demand)."""
    return DICOMSeries.open(ref.files)
