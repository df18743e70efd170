"""The header pass of one DICOM file: a ``struct`` walk to PixelData, pydicom as the fallback.

Only the tags of :data:`HEADER_TAGS` are kept (raw bytes, converted only when used); where the
PixelData (7FE0,0010) element starts and how long it is are checked, so missing and truncated
pixel data are found without decoding anything. Where the stored values can be read straight
from the file (see :class:`NativePixels`), the header says so. Errors are short reasons that
name tags, never patient data.
"""

from __future__ import annotations

import functools
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path, PurePath

from medfake.core.errors import DICOMError
from medfake.io.elements import (  # noqa: F401 - scan_header and RawHeader: importable from here, as before
    EXPLICIT_BIG, EXPLICIT_LITTLE, FLOAT_PIXEL_DATA, FLOAT_PIXELS, IMPLICIT_LITTLE, LONG_LENGTH_VRS, NO_PIXEL_DATA,
    PIXEL_DATA, UNDEFINED_LENGTH, RawHeader, scan_header,
)


# Tags the header pass keeps (keyword → tag); everything else is skipped without being converted.
HEADER_TAGS: dict[str, int] = {
    "Modality": 0x00080060,
    "SeriesInstanceUID": 0x0020000E,
    "InstanceNumber": 0x00200013,
    "ImagePositionPatient": 0x00200032,
    "ImageOrientationPatient": 0x00200037,
    "SamplesPerPixel": 0x00280002,
    "PhotometricInterpretation": 0x00280004,
    "NumberOfFrames": 0x00280008,
    "Rows": 0x00280010,
    "Columns": 0x00280011,
    "PixelSpacing": 0x00280030,
    "BitsAllocated": 0x00280100,
    "BitsStored": 0x00280101,
    "PixelRepresentation": 0x00280103,
    "RescaleIntercept": 0x00281052,
    "RescaleSlope": 0x00281053,
}
_HEADER_TAG_SET = frozenset(HEADER_TAGS.values())
# (0028,0004) PhotometricInterpretation and (0028,0008) NumberOfFrames values of one greyscale
# frame, raw (CS/IS padded to even length) or as pydicom converts them.
_MONOCHROME = frozenset({b"MONOCHROME1 ", b"MONOCHROME2 ", "MONOCHROME1", "MONOCHROME2"})
_ONE_FRAME = frozenset({None, b"1 ", "1", 1})
# Native (uncompressed) little-endian syntaxes: PixelData is the stored values as they are.
NATIVE_LITTLE_ENDIAN = frozenset({IMPLICIT_LITTLE, EXPLICIT_LITTLE})


@dataclass(frozen=True)
class NativePixels:
    """Where a file's stored values lie and how to read them without a decoder.

    Set only when numpy reading these bytes gives exactly what pydicom's ``pixel_array`` gives:
    a native little-endian syntax, one greyscale frame, PixelData the last element and exactly
    Rows × Columns × BitsAllocated (0028,0100) bits long (plus the even-length pad byte).
    """

    offset: int  # file position of the PixelData (7FE0,0010) value
    dtype: str  # "<u2", "<i2"…: PixelRepresentation (0028,0103) 0 unsigned, 1 two's complement
    unused_bits: int  # BitsAllocated − BitsStored (0028,0101): pydicom shifts them out (sign-extends)

    @property
    def stored_range(self) -> tuple[int, int]:
        """The smallest and largest stored value once the unused bits are shifted out."""
        bits = 8 * int(self.dtype[-1]) - self.unused_bits
        return (0, 2**bits - 1) if self.dtype[1] == "u" else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


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
    pixels: NativePixels | None = None  # None: pydicom decodes (compressed or unusual files)

    @property
    def file_number(self) -> int | None:
        return file_number(self.path)


def file_number(path: str | os.PathLike) -> int | None:
    """The integer a file's stem spells (``"17.dcm"`` → 17), else None."""
    stem = path.stem if isinstance(path, PurePath) else Path(path).stem
    return int(stem) if stem.isdigit() else None


@functools.lru_cache(maxsize=65536)  # a series is sorted and ordered by name more than once
def natural_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name))


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
    if type(value) is bytes and value.isascii():  # raw bytes (the usual case): float() parses ASCII bytes as text
        text = value.strip(b" \x00")
        separator = b"\\"
    else:
        text, separator = element_text(value), "\\"
    if not text:
        return None
    try:
        items = tuple(map(float, text.split(separator)))
    except ValueError:
        return None
    if len(items) != count or not all(map(math.isfinite, items)):
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
        transfer_syntax = IMPLICIT_LITTLE if implicit else (EXPLICIT_LITTLE if little else EXPLICIT_BIG)
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
        header.pixel_problem = NO_PIXEL_DATA
        return header
    group, element = struct.unpack(order + "HH", head[:4])
    tag = (group << 16) | element
    if tag != PIXEL_DATA:
        header.pixel_problem = FLOAT_PIXELS if tag in FLOAT_PIXEL_DATA else NO_PIXEL_DATA
        return header
    if implicit:
        length, size = struct.unpack(order + "I", head[4:8])[0], 8
    elif head[4:6] in LONG_LENGTH_VRS and len(head) == 12:
        length, size = struct.unpack(order + "I", head[8:12])[0], 12
    else:
        length, size = struct.unpack(order + "H", head[6:8])[0], 8
    header.pixel_length = None if length == UNDEFINED_LENGTH else length
    header.pixel_offset = start + size
    header.pixel_bytes_left = file_size - start - size
    return header


def read_raw_header(path: str | os.PathLike) -> RawHeader:
    """Raw values of :data:`HEADER_TAGS` and the PixelData extent; fast path first, pydicom second.

    Raises DICOMError with a short reason for non-DICOM or unreadable files.
    """
    path = path if isinstance(path, Path) else Path(path)
    try:
        with open(path, "rb", buffering=0) as handle:  # unbuffered: the walk reads 16 KiB chunks itself
            file_size = os.fstat(handle.fileno()).st_size
            header = scan_header(handle, file_size, _HEADER_TAG_SET)
        if header is None:
            with open(path, "rb") as handle:  # pydicom reads element by element: buffered
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
    path = path if isinstance(path, Path) else Path(path)
    header = read_raw_header(path)
    if header.pixel_problem:
        raise DICOMError(header.pixel_problem)
    values = header.values
    key = (header.transfer_syntax, header.little_endian, header.pixel_length, header.pixel_bytes_left,
           header.pixel_offset is not None, *[values.get(tag) for tag in _SHARED_TAGS])
    try:
        shared = _shared_fields(key)
    except TypeError:  # pydicom-converted multi-values are unhashable: parsed without the cache
        shared = _shared_fields.__wrapped__(key)
    instance = _text_number(values.get(_INSTANCE_NUMBER))
    return SliceHeader(
        path=path,
        series_uid=shared.series_uid,
        modality=shared.modality,
        rows=shared.rows,
        columns=shared.columns,
        pixel_spacing=shared.pixel_spacing,
        position=_text_numbers(values.get(_IMAGE_POSITION), 3),
        orientation=shared.orientation,
        instance_number=int(instance) if instance is not None else None,
        slope=shared.slope,
        intercept=shared.intercept,
        has_rescale=shared.has_rescale,
        transfer_syntax=header.transfer_syntax,
        pixels=NativePixels(header.pixel_offset, *shared.native) if shared.native else None,
    )


# ImagePositionPatient (0020,0032) and InstanceNumber (0020,0013) differ from slice to slice; the
# other tags are mostly the same bytes throughout a series, so they are checked and parsed once.
_IMAGE_POSITION, _INSTANCE_NUMBER = HEADER_TAGS["ImagePositionPatient"], HEADER_TAGS["InstanceNumber"]
_SHARED_KEYWORDS = tuple(k for k, tag in HEADER_TAGS.items() if tag not in (_IMAGE_POSITION, _INSTANCE_NUMBER))
_SHARED_TAGS = tuple(HEADER_TAGS[k] for k in _SHARED_KEYWORDS)


@dataclass(frozen=True)
class _Shared:
    series_uid: str
    modality: str
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    orientation: tuple[float, ...] | None
    slope: float
    intercept: float
    has_rescale: bool
    native: tuple[str, int] | None  # NativePixels' dtype and unused bits (the offset is per file)


@functools.lru_cache(maxsize=256)
def _shared_fields(key: tuple) -> _Shared:
    """The checks and values of a header's tags other than position and instance number."""
    transfer_syntax, little, length, remaining, has_offset, *values = key
    raw = dict(zip(_SHARED_KEYWORDS, values))
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
    native = None
    if transfer_syntax in NATIVE_LITTLE_ENDIAN and little and has_offset and length is not None:
        native = _native_layout(raw, rows, columns, length, remaining)
    return _Shared(
        series_uid=series_uid,
        modality=element_text(raw["Modality"]).upper(),
        rows=rows,
        columns=columns,
        pixel_spacing=_text_numbers(raw["PixelSpacing"], 2),
        orientation=_text_numbers(raw["ImageOrientationPatient"], 6),
        slope=slope if slope is not None else 1.0,
        intercept=intercept if intercept is not None else 0.0,
        has_rescale=slope is not None and intercept is not None,
        native=native,
    )


def _one_us(value) -> int | None:
    """One US value exactly as pydicom reads it (two bytes, little endian), else None."""
    if isinstance(value, bytes):
        return struct.unpack("<H", value)[0] if len(value) == 2 else None
    return value if isinstance(value, int) else None


def _among(value, allowed: frozenset) -> bool:
    try:
        return value in allowed
    except TypeError:  # a multi-valued element (unhashable): never one greyscale frame
        return False


def _native_layout(raw: dict, rows: int, columns: int, length: int, remaining: int) -> tuple[str, int] | None:
    """(dtype, unused bits) of :class:`NativePixels` when reading the stored values with numpy
    equals pydicom's ``pixel_array``; None for anything else, which pydicom then decodes."""
    bits, stored = _one_us(raw["BitsAllocated"]), _one_us(raw["BitsStored"])
    signed, samples = _one_us(raw["PixelRepresentation"]), _one_us(raw["SamplesPerPixel"])
    if (_one_us(raw["Rows"]), _one_us(raw["Columns"])) != (rows, columns) or samples != 1:
        return None
    if bits not in (8, 16, 32) or stored is None or not 1 <= stored <= bits or signed not in (0, 1):
        return None
    if not (_among(raw["PhotometricInterpretation"], _MONOCHROME) and _among(raw["NumberOfFrames"], _ONE_FRAME)):
        return None
    expected = rows * columns * (bits // 8)
    # exactly one frame, padded to even length (PS3.5 §8.1.1), and nothing after it in the file
    if length not in (expected, expected + expected % 2) or remaining != length:
        return None
    return f"<{'ui'[signed]}{bits // 8}", bits - stored
