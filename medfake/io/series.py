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
from medfake.io.ordering import (  # noqa: F401 - the tolerances: importable from here, as before
    DUPLICATE_TOLERANCE_MM, GAP_FACTOR, UNEVEN_TOLERANCE, keep_majority_size, keep_one_series, order_slices,
    report_file_numbers, report_spacing,
)
from medfake.io.pixels import decode_stored, read_native
from medfake.io.transforms import hu_int16, to_hu



def _list_folder(folder: Path) -> list[Path]:
    if not folder.exists():
        raise DICOMError(f"{folder}: no such file or folder")
    if not folder.is_dir():
        return [folder]
    with os.scandir(folder) as listing:  # the directory entry's type: no stat per file
        entries = sorted(listing, key=lambda entry: natural_key(entry.name))
    files = [folder / entry.name for entry in entries if entry.is_file() and not entry.name.startswith(".")]
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
        headers = keep_one_series(headers, skipped, problems, source)
        headers = keep_majority_size(headers, skipped, problems, source)
        headers, positions, ordering = order_slices(headers, skipped, problems)
        report_spacing(headers, positions, problems)
        report_file_numbers(headers, problems)
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

    def read_hu_int16(self, indices, out: np.ndarray) -> np.ndarray:
        """HU of the sorted slices ``indices`` rounded and clipped to int16, into ``out`` (n, rows,
        columns): the bytes of ``np.clip(np.rint(self.read_hu(indices)), -32768, 32767).astype(np.int16)``
        (integer arithmetic where float32 would be exact, see :func:`medfake.io.transforms.hu_int16`)."""
        chosen = self._indices(indices)
        if out.shape != (len(chosen), self.rows, self.columns) or out.dtype != np.int16:
            raise ValueError(f"out must be int16 of shape {(len(chosen), self.rows, self.columns)}, got {out.dtype} {out.shape}")
        buffers: dict[str, np.ndarray] = {}
        scratch = np.empty((self.rows, self.columns), dtype=np.float32)
        for k, i in enumerate(chosen):
            header = self._headers[i]
            stored_range = header.pixels.stored_range if header.pixels is not None else None
            hu_int16(self._decode(i, buffers), header.slope, header.intercept, out[k], stored_range=stored_range,
                     scratch=scratch)
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
