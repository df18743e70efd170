"""CT series reading: headers first, sort, HU on demand, and the problems found on the way.

A series is opened by reading only the header of every file (:mod:`medfake.io.header`). Slices
are ordered by ImagePositionPatient (0020,0032) projected on the slice normal (the cross product of
the two ImageOrientationPatient (0020,0037) direction cosines), falling back to InstanceNumber
(0020,0013) and then to the number in the file name. Pixels are decoded only for the slices a
caller asks for, and HU = stored × RescaleSlope (0028,1053) + RescaleIntercept (0028,1052).

Problems (duplicated positions, gaps, uneven spacing, mixed sizes, other series, skipped files)
are collected as short sentences that name files and tags, never patient data.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from medfake.core.errors import DICOMError
from medfake.io.header import SliceHeader, natural_key, read_header
from medfake.io.pixels import decode_stored, read_native
from medfake.io.transforms import slice_normal, to_hu

DUPLICATE_TOLERANCE_MM = 0.01
GAP_FACTOR = 1.5
UNEVEN_TOLERANCE = 0.01  # relative spread of slice spacings still counted as even


def _list_folder(folder: Path) -> list[Path]:
    if not folder.exists():
        raise DICOMError(f"{folder}: no such file or folder")
    if not folder.is_dir():
        return [folder]
    entries = sorted(folder.iterdir(), key=lambda entry: natural_key(entry.name))
    files = [entry for entry in entries if entry.is_file() and not entry.name.startswith(".")]
    if not files:
        subfolders = sum(1 for entry in entries if entry.is_dir())
        hint = f" (it has {subfolders} sub-folders: give a series folder)" if subfolders else ""
        raise DICOMError(f"{folder}: empty folder, no DICOM files{hint}")
    return files


def _common_folder(paths: Sequence[Path]) -> Path:
    parents = {str(path.parent) for path in paths}
    if len(parents) == 1:
        return paths[0].parent
    return Path(os.path.commonpath(sorted(parents)))


class DICOMSeries:
    """One CT series: sorted slices, geometry, problems found; pixels decoded on demand.

    Build with :meth:`DICOMSeries.open`. Index ``i`` everywhere is the position in the sorted
    order (``paths[i]``, ``slice_positions[i]``, ``read_hu([i])``).
    """

    def __init__(
        self,
        headers: list[SliceHeader],
        slice_positions: np.ndarray,
        ordering: str,
        problems: list[str],
        skipped: list[tuple[str, str]],
        source: Path,
    ):
        self._headers = headers
        self.source = source
        self.series_uid = headers[0].series_uid
        self.modality = headers[0].modality
        self.rows = headers[0].rows
        self.columns = headers[0].columns
        spacings = Counter(h.pixel_spacing for h in headers if h.pixel_spacing is not None)
        self.pixel_spacing: tuple[float, float] | None = spacings.most_common(1)[0][0] if spacings else None
        self.slice_positions = np.asarray(slice_positions, dtype=np.float64)
        steps = np.abs(np.diff(self.slice_positions))
        self.spacing = float(np.median(steps)) if steps.size and np.all(np.isfinite(steps)) else float("nan")
        self.paths = [h.path for h in headers]
        self.file_numbers = [h.file_number for h in headers]
        self.instance_numbers = [h.instance_number for h in headers]
        self.ordering = ordering
        self.problems = problems
        self.skipped = skipped
        syntaxes = Counter(h.transfer_syntax for h in headers)
        self.transfer_syntax = syntaxes.most_common(1)[0][0]

    # -- construction -------------------------------------------------------------------

    @classmethod
    def open(cls, source: str | os.PathLike | Iterable[str | os.PathLike]) -> "DICOMSeries":
        """Read the headers of a series folder, one file, or a list of files, and sort them.

        Unreadable, non-DICOM, pixel-less, truncated, off-size and other-series files are
        skipped with a reason; DICOMError when nothing usable remains or the series is not CT.
        """
        if isinstance(source, (str, os.PathLike)):
            location = Path(source)
            paths = _list_folder(location)
        else:
            paths = [Path(item) for item in source]
            if not paths:
                raise DICOMError("no DICOM files given")
            location = _common_folder(paths)
        headers: list[SliceHeader] = []
        skipped: list[tuple[str, str]] = []
        for path in paths:
            try:
                headers.append(read_header(path))
            except DICOMError as exc:
                skipped.append((path.name, str(exc)))
        return cls.from_headers(headers, skipped, location)

    @classmethod
    def from_headers(
        cls, headers: list[SliceHeader], skipped: list[tuple[str, str]], source: Path
    ) -> "DICOMSeries":
        """Assemble a series from headers already read (see :func:`read_header`)."""
        skipped = list(skipped)
        problems: list[str] = []
        if not headers:
            first = f" (e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
            raise DICOMError(f"{source}: no readable DICOM image among {len(skipped)} files{first}")
        headers = _keep_one_series(headers, skipped, problems, source)
        headers = _keep_majority_size(headers, skipped, problems, source)
        headers, positions, ordering = _order(headers, skipped, problems)
        _report_spacing(headers, positions, problems)
        _report_file_numbers(headers, problems)
        missing_rescale = sum(1 for h in headers if not h.has_rescale)
        if missing_rescale:
            problems.append(
                f"RescaleSlope/RescaleIntercept (0028,1053/1052) absent in {missing_rescale} of "
                f"{len(headers)} files: slope 1 and intercept 0 used"
            )
        if skipped:
            problems.append(f"{len(skipped)} files skipped (see skipped files)")
        series = cls(headers, positions, ordering, problems, skipped, source)
        order_note = series.file_order_problem()
        if order_note:
            problems.append(order_note)
        return series

    # -- queries --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._headers)

    def __repr__(self) -> str:
        return (
            f"DICOMSeries({self.source.name!r}, {len(self)} slices of {self.rows}×{self.columns}, "
            f"ordering={self.ordering!r}, {len(self.problems)} problems)"
        )

    @property
    def headers(self) -> list[SliceHeader]:
        return list(self._headers)

    @property
    def file_order(self) -> str | None:
        """How file numbers run along the sorted slices: 'ascending', 'descending', 'mixed', or None.

        None when some file names are not numbers.
        """
        numbers = self.file_numbers
        if any(number is None for number in numbers):
            return None
        if len(numbers) < 2:
            return "ascending"
        steps = np.diff(np.asarray(numbers, dtype=np.int64))
        if np.all(steps > 0):
            return "ascending"
        if np.all(steps < 0):
            return "descending"
        return "mixed"

    def file_order_problem(self) -> str | None:
        """A sentence when file numbers do not run monotonically along the slice positions."""
        if self.ordering != "position" or self.file_order != "mixed":
            return None
        numbers = self.file_numbers
        steps = np.sign(np.diff(np.asarray(numbers, dtype=np.int64)))
        main = 1 if np.sum(steps > 0) >= np.sum(steps < 0) else -1
        first = int(np.argmax(steps != main))
        return (
            "file numbers do not follow the ImagePositionPatient order: "
            f"{self.paths[first].name} is followed by {self.paths[first + 1].name} along the slice normal"
        )

    def index_of_file_number(self, number: int) -> int:
        """Sorted index of the file whose stem is ``number`` (CT-GAN label ``slice``); KeyError if none."""
        try:
            return self.file_numbers.index(int(number))
        except ValueError:
            raise KeyError(number) from None

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(len(self)))
        if isinstance(indices, slice):
            return list(range(len(self)))[indices]
        result = [int(i) for i in np.atleast_1d(np.asarray(indices))]
        for i in result:
            if not -len(self) <= i < len(self):
                raise IndexError(f"slice index {i} out of range for {len(self)} slices")
        return [i % len(self) for i in result]

    # -- pixels ---------------------------------------------------------------------------

    def read_stored(self, indices=None) -> np.ndarray:
        """Stored pixel values (n, rows, columns) of the sorted slices ``indices`` (all if None)."""
        chosen = self._indices(indices)
        slices = [self._decode(i) for i in chosen]
        if not slices:
            return np.empty((0, self.rows, self.columns), dtype=np.int16)
        return np.stack(slices)

    def read_hu(self, indices=None, out: np.ndarray | None = None) -> np.ndarray:
        """Hounsfield units, float32 (n, rows, columns), decoding only the slices asked for.

        ``out`` (float32, that shape) is filled instead of a new array: callers reading many
        batches reuse one, as fresh memory costs a page fault per 4 KiB written.
        """
        chosen = self._indices(indices)
        shape = (len(chosen), self.rows, self.columns)
        if out is None:
            out = np.empty(shape, dtype=np.float32)
        elif out.shape != shape or out.dtype != np.float32:
            raise ValueError(f"out must be float32 of shape {shape}, got {out.dtype} {out.shape}")
        scratch: dict[str, np.ndarray] = {}  # one read buffer per stored dtype, reused slice after slice
        for k, i in enumerate(chosen):
            header = self._headers[i]
            to_hu(self._decode(i, scratch), header.slope, header.intercept, out=out[k])
        return out

    def _decode(self, index: int, scratch: dict[str, np.ndarray] | None = None) -> np.ndarray:
        header = self._headers[index]
        if header.pixels is not None:
            buffer = None
            if scratch is not None:
                buffer = scratch.get(header.pixels.dtype)
                if buffer is None:
                    buffer = scratch[header.pixels.dtype] = np.empty((header.rows, header.columns), header.pixels.dtype)
            return read_native(header.path, header.pixels, header.rows, header.columns, out=buffer)
        stored = decode_stored(header.path, header.transfer_syntax)
        if stored.shape != (self.rows, self.columns):
            raise DICOMError(
                f"{header.path}: decoded PixelData has shape {stored.shape}, "
                f"Rows/Columns say {self.rows}×{self.columns}"
            )
        return stored


def _keep_one_series(headers, skipped, problems, source) -> list[SliceHeader]:
    """Keep the largest CT series of a folder; a folder with no CT series is an error."""
    groups: dict[str, list[SliceHeader]] = {}
    for header in headers:
        groups.setdefault(header.series_uid, []).append(header)
    ranked = sorted(groups.values(), key=lambda group: (-len(group), group[0].series_uid))
    ct_groups = [group for group in ranked if group[0].modality == "CT"]
    if not ct_groups:
        modality = ranked[0][0].modality or "missing"
        raise DICOMError(f"{source}: Modality is {modality}, not CT (tag 0008,0060); medfake reads CT series only")
    kept = ct_groups[0]
    others = [group for group in ranked if group is not kept]
    if others:
        dropped = sum(len(group) for group in others)
        modalities = ", ".join(sorted({group[0].modality or "?" for group in others}))
        problems.append(
            f"folder holds {len(groups)} series (SeriesInstanceUID): kept the largest CT series "
            f"({len(kept)} files), skipped {dropped} files of {len(others)} other series ({modalities})"
        )
        for group in others:
            for header in group:
                skipped.append((header.path.name, f"belongs to another series (Modality {header.modality or '?'})"))
    return kept


def _keep_majority_size(headers, skipped, problems, source) -> list[SliceHeader]:
    sizes = Counter((h.rows, h.columns) for h in headers)
    if len(sizes) == 1:
        return headers
    (size, count), = sizes.most_common(1)
    listing = ", ".join(f"{r}×{c} ({n} files)" for (r, c), n in sizes.most_common())
    if count * 2 <= len(headers):
        raise DICOMError(f"{source}: mixed image sizes (Rows×Columns) {listing}; no size holds a majority")
    problems.append(f"mixed image sizes (Rows×Columns) {listing}: kept {size[0]}×{size[1]}")
    kept = []
    for header in headers:
        if (header.rows, header.columns) == size:
            kept.append(header)
        else:
            skipped.append(
                (header.path.name, f"image size {header.rows}×{header.columns} differs from the series' {size[0]}×{size[1]}")
            )
    return kept


def _instance_key(header: SliceHeader):
    number = header.instance_number
    return (number is None, number if number is not None else 0, natural_key(header.path.name))


def _order(headers, skipped, problems) -> tuple[list[SliceHeader], np.ndarray, str]:
    """Sort by position along the normal, else InstanceNumber, else file number/name."""
    with_geometry = [h for h in headers if h.position is not None and h.orientation is not None]
    normal = None
    if len(with_geometry) == len(headers):
        orientations = Counter(h.orientation for h in headers)
        main_orientation = orientations.most_common(1)[0][0]
        try:
            normal = slice_normal(main_orientation)
        except ValueError as exc:
            problems.append(f"ImageOrientationPatient (0020,0037) unusable ({exc}): slices not ordered by position")
        else:
            alignment = {o: abs(float(np.dot(_normal_or_zero(o), normal))) for o in orientations}
            tilted = [h for h in headers if alignment[h.orientation] < 0.999]
            if tilted:
                problems.append(
                    f"ImageOrientationPatient (0020,0037) differs by more than 2.5° in {len(tilted)} files"
                )
    elif with_geometry:
        problems.append(
            f"ImagePositionPatient/ImageOrientationPatient (0020,0032/0037) missing in "
            f"{len(headers) - len(with_geometry)} of {len(headers)} files: slices not ordered by position"
        )
    if normal is not None:
        raw = np.array([h.position for h in headers], dtype=np.float64) @ normal
        order = sorted(range(len(headers)), key=lambda i: (raw[i], _instance_key(headers[i])))
        ordered = [headers[i] for i in order]
        positions = raw[order]
        ordered, positions = _drop_duplicate_positions(ordered, positions, skipped, problems)
        return ordered, positions, "position"
    nan_positions = np.full(len(headers), np.nan)
    if all(h.instance_number is not None for h in headers):
        ordered = sorted(headers, key=_instance_key)
        repeated = [n for n, c in Counter(h.instance_number for h in headers).items() if c > 1]
        if repeated:
            problems.append(f"InstanceNumber (0020,0013) repeated for {len(repeated)} values, e.g. {sorted(repeated)[0]}")
        if not with_geometry:
            problems.append("no ImagePositionPatient (0020,0032): slices ordered by InstanceNumber")
        return ordered, nan_positions, "instance"
    ordered = sorted(headers, key=lambda h: (h.file_number is None, h.file_number or 0, natural_key(h.path.name)))
    problems.append("no ImagePositionPatient (0020,0032) nor InstanceNumber (0020,0013): slices ordered by file name")
    return ordered, nan_positions, "file"


def _normal_or_zero(orientation) -> np.ndarray:
    """The slice normal, or a zero vector (never parallel to anything) when unusable."""
    try:
        return slice_normal(orientation)
    except ValueError:
        return np.zeros(3)


def _drop_duplicate_positions(ordered, positions, skipped, problems):
    """Of slices at the same position (within 0.01 mm) keep the one with the lowest InstanceNumber."""
    clusters: list[list[int]] = []
    for i in range(len(ordered)):
        if clusters and positions[i] - positions[clusters[-1][0]] <= DUPLICATE_TOLERANCE_MM:
            clusters[-1].append(i)
        else:
            clusters.append([i])
    keep = []
    for cluster in clusters:
        best = min(cluster, key=lambda i: _instance_key(ordered[i]))
        keep.append(best)
        kept = ordered[best]
        for i in cluster:
            if i == best:
                continue
            dropped = ordered[i]
            problems.append(
                f"duplicated position {positions[best]:.2f} mm: kept {kept.path.name} "
                f"(InstanceNumber {kept.instance_number}), dropped {dropped.path.name} "
                f"(InstanceNumber {dropped.instance_number})"
            )
            skipped.append((dropped.path.name, f"same position as {kept.path.name}, which has the lower InstanceNumber"))
    return [ordered[i] for i in keep], positions[keep]


def _report_spacing(headers, positions, problems) -> None:
    if len(headers) < 3 or not np.all(np.isfinite(positions)):
        return
    steps = np.diff(positions)
    median = float(np.median(steps))
    gap_steps = np.flatnonzero(steps > GAP_FACTOR * median)
    for i in gap_steps[:5]:
        problems.append(
            f"gap of {steps[i]:.2f} mm between {headers[i].path.name} and {headers[i + 1].path.name} "
            f"(median spacing {median:.2f} mm)"
        )
    if gap_steps.size > 5:
        problems.append(f"{gap_steps.size - 5} more gaps larger than {GAP_FACTOR}× the median spacing")
    regular = np.delete(steps, gap_steps)
    if regular.size and float(regular.max() - regular.min()) > UNEVEN_TOLERANCE * median + 1e-3:
        problems.append(
            f"uneven slice spacing: {regular.min():.2f}–{regular.max():.2f} mm (median {median:.2f} mm)"
        )


def _report_file_numbers(headers, problems) -> None:
    numbers = [h.file_number for h in headers]
    if not numbers or any(number is None for number in numbers):
        return
    present = set(numbers)
    missing = [n for n in range(min(present), max(present) + 1) if n not in present]
    if missing:
        problems.append(
            f"file numbers {min(present)}–{max(present)} have {len(missing)} missing, first {missing[0]}"
        )
