"""The header pass of one DICOM file: a ``struct`` walk to PixelData, pydicom as the fallback.

Only the tags of :data:`HEADER_TAGS` are kept (raw bytes, converted only when used); where the
PixelData (7FE0,0010) element starts and how long it is are checked, so missing and truncated
pixel data are found without decoding anything. Errors are short reasons that name tags, never
patient data.
"""

from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from medfake.core.errors import DICOMError


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


def natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def one_line(exc: BaseException, limit: int = 160) -> str:
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
        raise DICOMError(f"unreadable ({one_line(exc)})") from None
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
