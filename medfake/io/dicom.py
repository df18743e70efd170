"""CT series reading: headers first, sort, HU, windowing — numpy in, numpy out.

A series is opened by reading only the header of every file (``stop_before_pixels``,
``specific_tags``) and checking where its PixelData (7FE0,0010) starts and how long it is, so
missing and truncated pixel data are found without decoding anything. Slices are ordered by
ImagePositionPatient (0020,0032) projected on the slice normal (the cross product of the two
ImageOrientationPatient (0020,0037) direction cosines), falling back to InstanceNumber
(0020,0013) and then to the number in the file name. Pixels are decoded only for the slices a
caller asks for, and HU = stored × RescaleSlope (0028,1053) + RescaleIntercept (0028,1052).

Problems (duplicated positions, gaps, uneven spacing, mixed sizes, other series, skipped files)
are collected as short sentences that name files and tags, never patient data.
"""

from __future__ import annotations

import functools
import math
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from medfake.core.errors import DICOMError

CODECS_HINT = "pip install 'medfake[codecs]'"

# Tags the header pass keeps (keyword → tag); everything else is skipped without being converted.
HEADER_TAGS: dict[str, int] = {
    "Modality": 0x00080060,
    "SeriesInstanceUID": 0x0020000E,
    "InstanceNumber": 0x00200013,
    "ImagePositionPatient": 0x00200032,
    "ImageOrientationPatient": 0x00200037,
    "SamplesPerPixel": 0x00280002,
    "NumberOfFrames": 0x00280008,
    "Rows": 0x00280010,
    "Columns": 0x00280011,
    "PixelSpacing": 0x00280030,
    "BitsAllocated": 0x00280100,
    "RescaleIntercept": 0x00281052,
    "RescaleSlope": 0x00281053,
}
_PIXEL_DATA_TAG = (0x7FE0, 0x0010)
_FLOAT_PIXEL_TAGS = ((0x7FE0, 0x0008), (0x7FE0, 0x0009))
_LONG_LENGTH_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_IMPLICIT_LITTLE = "1.2.840.10008.1.2"
_EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
_EXPLICIT_BIG = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_UNDEFINED_LENGTH = 0xFFFFFFFF
DUPLICATE_TOLERANCE_MM = 0.01
GAP_FACTOR = 1.5
UNEVEN_TOLERANCE = 0.01  # relative spread of slice spacings still counted as even


# ----------------------------------------------------------------------------- numpy maths


def to_hu(stored: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    """Hounsfield units from stored values: stored × RescaleSlope + RescaleIntercept (float32)."""
    hu = np.asarray(stored, dtype=np.float32) * np.float32(slope)
    hu += np.float32(intercept)
    return hu


def window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear CT window: [center − width/2, center + width/2] mapped to [0, 1], clipped (float32)."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    low = np.float32(center - width / 2.0)
    scaled = (np.asarray(hu, dtype=np.float32) - low) / np.float32(width)
    return np.clip(scaled, 0.0, 1.0, out=scaled)


def window_uint8(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """The window of :func:`window` as 8-bit grey levels 0–255 (for figures and PNGs)."""
    return np.rint(window(hu, center, width) * 255.0).astype(np.uint8)


@functools.lru_cache(maxsize=32)
def _axis_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) resampling matrix: area averaging when shrinking, bilinear when growing.

    Cached (read-only): a data set resizes thousands of slices between the same sizes.
    """
    if n_out <= n_in:
        scale = n_in / n_out
        starts = np.arange(n_out) * scale
        ends = starts + scale
        edges = np.arange(n_in)
        overlap = np.minimum(ends[:, None], edges[None, :] + 1) - np.maximum(starts[:, None], edges[None, :])
        weights = np.clip(overlap, 0.0, None) / scale
    else:
        centres = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        centres = np.clip(centres, 0.0, n_in - 1)
        low = np.floor(centres).astype(int)
        high = np.minimum(low + 1, n_in - 1)
        frac = centres - low
        weights = np.zeros((n_out, n_in))
        rows = np.arange(n_out)
        np.add.at(weights, (rows, low), 1.0 - frac)
        np.add.at(weights, (rows, high), frac)
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resample the last two axes to (size, size), float32.

    Shrinking averages the area each output pixel covers (an exact block mean when the size
    divides evenly, e.g. 512 → 128); growing interpolates bilinearly with pixel centres aligned
    (as OpenCV's INTER_LINEAR). Leading axes (a stack of slices) are kept.
    """
    array = np.asarray(image, dtype=np.float32)
    if array.ndim < 2:
        raise ValueError(f"resize needs at least 2 dimensions, got shape {array.shape}")
    if size < 1:
        raise ValueError(f"size must be ≥ 1, got {size}")
    rows, cols = array.shape[-2:]
    if (rows, cols) == (size, size):
        return array.copy()
    if rows % size == 0 and cols % size == 0:
        fy, fx = rows // size, cols // size
        blocks = array.reshape(*array.shape[:-2], size, fy, size, fx)
        return blocks.mean(axis=(-3, -1), dtype=np.float32)
    wy = _axis_weights(rows, size)
    wx = _axis_weights(cols, size)
    return np.matmul(np.matmul(wy, array), wx.T)


def slice_normal(iop: Sequence[float]) -> np.ndarray:
    """Unit normal of a slice: row cosine × column cosine of ImageOrientationPatient (0020,0037)."""
    values = np.asarray(iop, dtype=np.float64).reshape(-1)
    if values.size != 6 or not np.all(np.isfinite(values)):
        raise ValueError(f"ImageOrientationPatient needs 6 finite numbers, got {values.size}")
    normal = np.cross(values[:3], values[3:])
    length = float(np.linalg.norm(normal))
    if length < 1e-6:
        raise ValueError("ImageOrientationPatient row and column cosines are parallel")
    return normal / length


def project_positions(ipp: np.ndarray, iop: Sequence[float]) -> np.ndarray:
    """Distance (mm) of each ImagePositionPatient (n, 3) along the slice normal."""
    positions = np.asarray(ipp, dtype=np.float64).reshape(-1, 3)
    return positions @ slice_normal(iop)


# ----------------------------------------------------------------------------- headers


@dataclass(frozen=True)
class SliceHeader:
    """What the header pass keeps of one file (no patient data)."""

    path: Path
    series_uid: str
    modality: str
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    instance_number: int | None
    slope: float
    intercept: float
    has_rescale: bool
    transfer_syntax: str

    @property
    def file_number(self) -> int | None:
        return file_number(self.path)


def file_number(path: str | os.PathLike) -> int | None:
    """The integer a file's stem spells (``"17.dcm"`` → 17), else None."""
    stem = Path(path).stem
    return int(stem) if stem.isdigit() else None


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _one_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def element_text(value) -> str:
    """A raw (undecoded bytes) or converted element value as stripped text."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1").strip(" \x00")
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(item) for item in value)
    return str(value).strip()


def _text_numbers(value, count: int) -> tuple[float, ...] | None:
    """A multi-valued DS element as ``count`` finite floats, or None when absent or malformed."""
    text = element_text(value)
    if not text:
        return None
    try:
        items = tuple(float(item) for item in text.split("\\"))
    except ValueError:
        return None
    if len(items) != count or not all(math.isfinite(item) for item in items):
        return None
    return items


def _text_number(value) -> float | None:
    numbers = _text_numbers(value, 1)
    return numbers[0] if numbers else None


def _unsigned_short(value, little_endian: bool) -> int | None:
    """A US element (Rows, Columns, BitsAllocated…) from raw bytes or a converted int."""
    if value is None:
        return None
    if isinstance(value, bytes):
        if len(value) < 2:
            return None
        return struct.unpack("<H" if little_endian else ">H", value[:2])[0]
    return int(value)


@dataclass
class RawHeader:
    """Undecoded values of the wanted tags, the encoding, and where PixelData lies."""

    values: dict[int, object]  # tag → raw bytes (or a pydicom-converted value)
    transfer_syntax: str
    implicit_vr: bool
    little_endian: bool
    pixel_length: int | None = None  # declared length; None when encapsulated (undefined length)
    pixel_bytes_left: int | None = None  # bytes in the file after the PixelData element header
    pixel_problem: str | None = None  # why there is no usable PixelData element


class _ChunkReader:
    """Random-ish access to the start of a file in 16 KiB chunks; seeks over large values."""

    CHUNK = 16384

    def __init__(self, handle):
        self.handle = handle
        self.base = 0
        self.data = b""

    def get(self, position: int, count: int) -> bytes:
        end = position + count
        if position >= self.base + len(self.data) + self.CHUNK:
            self.handle.seek(position)
            self.base, self.data = position, b""
        while self.base + len(self.data) < end:
            more = self.handle.read(max(self.CHUNK, end - self.base - len(self.data)))
            if not more:
                break
            self.data += more
        return self.data[position - self.base : end - self.base]


def _element_header(reader: _ChunkReader, position: int, implicit: bool):
    """(group, element, VR bytes or None, value length, header size) of the element at ``position``;
    None at the end of the file; ValueError when the bytes are not a plausible element."""
    head = reader.get(position, 12)
    if not head:
        return None
    if len(head) < 8:
        raise ValueError("element header cut short")
    group, element = struct.unpack_from("<HH", head)
    if implicit or group == 0xFFFE:
        return group, element, None, struct.unpack_from("<I", head, 4)[0], 8
    vr = head[4:6]
    if not (vr.isalpha() and vr.isupper()):
        raise ValueError("invalid VR")
    if vr in _LONG_LENGTH_VRS:
        if len(head) < 12:
            raise ValueError("element header cut short")
        return group, element, vr, struct.unpack_from("<I", head, 8)[0], 12
    return group, element, vr, struct.unpack_from("<H", head, 6)[0], 8


def _skip_sequence(reader: _ChunkReader, position: int, implicit: bool, depth: int = 0) -> int:
    """Position after an undefined-length sequence whose first item starts at ``position``."""
    if depth > 16:
        raise ValueError("sequences nested too deep")
    while True:
        head = reader.get(position, 8)
        if len(head) < 8:
            raise ValueError("sequence cut short")
        group, element, length = struct.unpack_from("<HHI", head)
        if (group, element) == (0xFFFE, 0xE0DD):  # sequence delimitation item
            return position + 8
        if (group, element) != (0xFFFE, 0xE000):
            raise ValueError("item expected in sequence")
        position += 8
        if length != _UNDEFINED_LENGTH:
            position += length
            continue
        while True:  # an undefined-length item: its elements up to the item delimitation item
            found = _element_header(reader, position, implicit)
            if found is None:
                raise ValueError("item cut short")
            group, element, vr, length, size = found
            position += size
            if (group, element) == (0xFFFE, 0xE00D):
                break
            if length == _UNDEFINED_LENGTH:
                position = _skip_sequence(reader, position, implicit or vr == b"UN", depth + 1)
            else:
                position += length


def scan_header(handle, file_size: int, wanted: Iterable[int], stop_after: int | None = None) -> RawHeader | None:
    """Walk a Part-10 file's elements up to PixelData with ``struct``, keeping the raw bytes of
    ``wanted`` tags — several times faster than a full parse. With ``stop_after`` the walk ends
    after that tag (no PixelData check).

    Returns None for anything it does not handle (no preamble, big endian, deflated, odd
    bytes): callers then fall back to pydicom, which also gives the precise error.
    """
    wanted = frozenset(wanted)
    reader = _ChunkReader(handle)
    try:
        if reader.get(128, 4) != b"DICM":
            return None
        position, transfer_syntax = 132, ""
        while reader.get(position, 2) == b"\x02\x00":  # File Meta (group 0002): explicit VR little endian
            group, element, vr, length, size = _element_header(reader, position, implicit=False)
            if element == 0x0010:
                transfer_syntax = reader.get(position + size, length).decode("ascii", "replace").strip(" \x00")
            position += size + length
        if not transfer_syntax.startswith(_IMPLICIT_LITTLE) or transfer_syntax in (_EXPLICIT_BIG, _DEFLATED):
            return None
        implicit = transfer_syntax == _IMPLICIT_LITTLE
        header = RawHeader({}, transfer_syntax, implicit, True)
        while True:
            found = _element_header(reader, position, implicit)
            if found is None:
                header.pixel_problem = "no PixelData (7FE0,0010): missing, or the file is truncated"
                return header
            group, element, vr, length, size = found
            tag = (group << 16) | element
            if stop_after is not None and tag > stop_after:
                return header
            if (group, element) == _PIXEL_DATA_TAG:
                header.pixel_length = None if length == _UNDEFINED_LENGTH else length
                header.pixel_bytes_left = file_size - position - size
                return header
            if (group, element) in _FLOAT_PIXEL_TAGS:
                header.pixel_problem = "float pixel data (7FE0,0008/0009) is not a CT image"
                return header
            position += size
            if length == _UNDEFINED_LENGTH:
                position = _skip_sequence(reader, position, implicit or vr == b"UN")
                continue
            if tag in wanted:
                value = reader.get(position, length)
                if len(value) < length:
                    return None
                header.values[tag] = value
            position += length
            if position > file_size:
                return None
    except (ValueError, struct.error):
        return None


def _looks_like_headerless_dicom(path: Path) -> bool:
    """DICOM written without preamble: starts with a group 0008 or 0002 element (little endian)."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return len(head) == 4 and head[:2] in (b"\x08\x00", b"\x02\x00")


def _pydicom_header(path: Path, handle, file_size: int) -> RawHeader:
    """The slow, general header pass: pydicom with ``stop_before_pixels`` and ``specific_tags``.

    pydicom stops just before PixelData and rewinds to the element's tag, so the PixelData
    element header is read here directly.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    tags = list(HEADER_TAGS.values())
    handle.seek(0)
    try:
        dataset = pydicom.dcmread(handle, stop_before_pixels=True, specific_tags=tags)
    except InvalidDicomError:
        if not _looks_like_headerless_dicom(path):
            raise DICOMError("not a DICOM file") from None
        handle.seek(0)
        dataset = pydicom.dcmread(handle, stop_before_pixels=True, specific_tags=tags, force=True)
    implicit, little = getattr(dataset, "original_encoding", (False, True))
    implicit, little = bool(implicit), little is not False
    meta = getattr(dataset, "file_meta", None)
    transfer_syntax = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
    if not transfer_syntax:
        transfer_syntax = _IMPLICIT_LITTLE if implicit else (_EXPLICIT_LITTLE if little else _EXPLICIT_BIG)
    values = {}
    for tag in tags:
        element = dataset.get_item(tag)  # the raw element: no value conversion (the fast part)
        if element is not None:
            values[tag] = element.value
    header = RawHeader(values, transfer_syntax, implicit, little)
    start = handle.tell()
    head = handle.read(12)
    order = "<" if little else ">"
    if len(head) < 8:
        header.pixel_problem = "no PixelData (7FE0,0010): missing, or the file is truncated"
        return header
    group, element = struct.unpack(order + "HH", head[:4])
    if (group, element) != _PIXEL_DATA_TAG:
        header.pixel_problem = (
            "float pixel data (7FE0,0008/0009) is not a CT image"
            if (group, element) in _FLOAT_PIXEL_TAGS
            else "no PixelData (7FE0,0010): missing, or the file is truncated"
        )
        return header
    if implicit:
        length, size = struct.unpack(order + "I", head[4:8])[0], 8
    elif head[4:6] in _LONG_LENGTH_VRS and len(head) == 12:
        length, size = struct.unpack(order + "I", head[8:12])[0], 12
    else:
        length, size = struct.unpack(order + "H", head[6:8])[0], 8
    header.pixel_length = None if length == _UNDEFINED_LENGTH else length
    header.pixel_bytes_left = file_size - start - size
    return header


def read_raw_header(path: str | os.PathLike) -> RawHeader:
    """Raw values of :data:`HEADER_TAGS` and the PixelData extent; fast path first, pydicom second.

    Raises DICOMError with a short reason for non-DICOM or unreadable files.
    """
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as handle:
            header = scan_header(handle, file_size, HEADER_TAGS.values())
            if header is None:
                header = _pydicom_header(path, handle, file_size)
    except DICOMError:
        raise
    except Exception as exc:  # pydicom raises many types for damaged files
        raise DICOMError(f"unreadable ({_one_line(exc)})") from None
    return header


def read_header(path: str | os.PathLike) -> SliceHeader:
    """Read one file's header (no pixels) and check its PixelData is present and complete.

    Raises DICOMError with a short reason (used as the ``skipped`` reason by series readers).
    """
    path = Path(path)
    header = read_raw_header(path)
    if header.pixel_problem:
        raise DICOMError(header.pixel_problem)
    raw = {keyword: header.values.get(tag) for keyword, tag in HEADER_TAGS.items()}
    little = header.little_endian
    rows = _unsigned_short(raw["Rows"], little)
    columns = _unsigned_short(raw["Columns"], little)
    if not rows or not columns:
        raise DICOMError("no Rows (0028,0010) / Columns (0028,0011): not an image")
    series_uid = element_text(raw["SeriesInstanceUID"])
    if not series_uid:
        raise DICOMError("no SeriesInstanceUID (0020,000E)")
    frames = _text_number(raw["NumberOfFrames"]) or 1
    if frames > 1:
        raise DICOMError(f"multi-frame image ({frames:g} frames) is not supported")
    samples = _unsigned_short(raw["SamplesPerPixel"], little) or 1
    if samples != 1:
        raise DICOMError(f"SamplesPerPixel (0028,0002) is {samples}: not a greyscale CT slice")
    length, remaining = header.pixel_length, header.pixel_bytes_left
    if length is not None:
        bits = _unsigned_short(raw["BitsAllocated"], little) or 16
        expected = (rows * columns * bits + 7) // 8
        if remaining < length:
            raise DICOMError(f"PixelData (7FE0,0010) truncated: {max(remaining, 0)} of {length} bytes in the file")
        if length < expected:
            raise DICOMError(f"PixelData (7FE0,0010) holds {length} bytes, {expected} expected for {rows}×{columns}")
    elif remaining <= 0:
        raise DICOMError("PixelData (7FE0,0010) truncated: no data after the element header")
    slope, intercept = _text_number(raw["RescaleSlope"]), _text_number(raw["RescaleIntercept"])
    instance = _text_number(raw["InstanceNumber"])
    return SliceHeader(
        path=path,
        series_uid=series_uid,
        modality=element_text(raw["Modality"]).upper(),
        rows=rows,
        columns=columns,
        pixel_spacing=_text_numbers(raw["PixelSpacing"], 2),
        position=_text_numbers(raw["ImagePositionPatient"], 3),
        orientation=_text_numbers(raw["ImageOrientationPatient"], 6),
        instance_number=int(instance) if instance is not None else None,
        slope=slope if slope is not None else 1.0,
        intercept=intercept if intercept is not None else 0.0,
        has_rescale=slope is not None and intercept is not None,
        transfer_syntax=header.transfer_syntax,
    )


def transfer_syntax_name(uid: str) -> str:
    """'RLE Lossless (1.2.840.10008.1.2.5)' for a transfer syntax UID."""
    from pydicom.uid import UID

    name = UID(uid).name if uid else "unknown transfer syntax"
    return f"{name} ({uid})" if name != uid else uid


def decode_stored(path: str | os.PathLike, transfer_syntax: str = "") -> np.ndarray:
    """Decode one file's stored pixel values (no rescale).

    ``transfer_syntax`` (from the header pass) names the syntax in errors: a compressed syntax
    with no decoder installed says which extra provides one.
    """
    import pydicom

    path = Path(path)
    try:
        dataset = pydicom.dcmread(path, force=True)
        if transfer_syntax and "TransferSyntaxUID" not in dataset.file_meta:  # files without File Meta
            dataset.file_meta.TransferSyntaxUID = transfer_syntax
        return dataset.pixel_array
    except Exception as exc:  # decoder errors come in many types; classify below
        support = decoder_support(transfer_syntax) if transfer_syntax else "available"
        if support == "missing":
            raise DICOMError(
                f"{path}: no decoder for {transfer_syntax_name(transfer_syntax)} is installed; run {CODECS_HINT}"
            ) from None
        if support == "unsupported":
            raise DICOMError(f"{path}: transfer syntax {transfer_syntax_name(transfer_syntax)} is not supported") from None
        raise DICOMError(f"{path}: cannot decode PixelData (7FE0,0010): {_one_line(exc)}") from None


def decoder_support(transfer_syntax: str) -> str:
    """'available', 'missing' (pydicom knows the syntax but no plugin is installed) or 'unsupported'."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(transfer_syntax)
    except (NotImplementedError, ValueError):
        return "unsupported"
    return "available" if decoder.is_available else "missing"


# ----------------------------------------------------------------------------- the series


def _list_folder(folder: Path) -> list[Path]:
    if not folder.exists():
        raise DICOMError(f"{folder}: no such file or folder")
    if not folder.is_dir():
        return [folder]
    entries = sorted(folder.iterdir(), key=lambda entry: _natural_key(entry.name))
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

    def read_hu(self, indices=None) -> np.ndarray:
        """Hounsfield units, float32 (n, rows, columns), decoding only the slices asked for."""
        chosen = self._indices(indices)
        volume = np.empty((len(chosen), self.rows, self.columns), dtype=np.float32)
        for out, i in enumerate(chosen):
            header = self._headers[i]
            volume[out] = to_hu(self._decode(i), header.slope, header.intercept)
        return volume

    def _decode(self, index: int) -> np.ndarray:
        header = self._headers[index]
        stored = decode_stored(header.path, header.transfer_syntax)
        if stored.shape != (self.rows, self.columns):
            raise DICOMError(
                f"{header.path}: decoded PixelData has shape {stored.shape}, "
                f"Rows/Columns say {self.rows}×{self.columns}"
            )
        return stored


# ----------------------------------------------------------------------------- assembly steps


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
    return (number is None, number if number is not None else 0, _natural_key(header.path.name))


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
    ordered = sorted(headers, key=lambda h: (h.file_number is None, h.file_number or 0, _natural_key(h.path.name)))
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
