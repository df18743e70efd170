"""The ``struct`` walk over a Part-10 file's data elements up to PixelData (7FE0,0010).

It keeps the raw bytes of the wanted tags and where the PixelData value starts, how long it is
and how much of the file follows it, without converting anything. Anything it does not handle
(no preamble, big endian, deflated, odd bytes) returns None so that callers use pydicom, which
also gives the precise error. The preprocess step walks every file of every scan once, so the
main loop works on the buffered bytes directly: one ``unpack_from`` per element.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable

PIXEL_DATA = 0x7FE00010  # (7FE0,0010) Pixel Data
FLOAT_PIXEL_DATA = frozenset({0x7FE00008, 0x7FE00009})  # Float / Double Float Pixel Data
LONG_LENGTH_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
IMPLICIT_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
EXPLICIT_BIG = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
UNDEFINED_LENGTH = 0xFFFFFFFF
NO_PIXEL_DATA = "no PixelData (7FE0,0010): missing, or the file is truncated"
FLOAT_PIXELS = "float pixel data (7FE0,0008/0009) is not a CT image"

# Explicit VR (PS3.5 §7.1.2): any two upper-case letters are accepted as a VR, as before; those of
# LONG_LENGTH_VRS have a 32-bit length after two reserved bytes, the others a 16-bit length.
_SHORT_VRS = frozenset(bytes((a, b)) for a in range(65, 91) for b in range(65, 91)) - LONG_LENGTH_VRS
_PIXEL_TAGS = FLOAT_PIXEL_DATA | {PIXEL_DATA}
_FIRST_PIXEL_TAG = min(_PIXEL_TAGS)
_EXPLICIT_HEAD = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
_IMPLICIT_HEAD = struct.Struct("<HHI")  # group, element, 32-bit length (also items, group FFFE)
_LONG_LENGTH = struct.Struct("<I")
_NO_STOP = 1 << 32
_WATCHED: dict[frozenset, frozenset] = {}  # wanted tags → those and the pixel data tags (one lookup per element)


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
    pixel_offset: int | None = None  # file position of the PixelData value


class ChunkReader:
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


def element_header(reader: ChunkReader, position: int, implicit: bool):
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
    if vr in LONG_LENGTH_VRS:
        if len(head) < 12:
            raise ValueError("element header cut short")
        return group, element, vr, struct.unpack_from("<I", head, 8)[0], 12
    return group, element, vr, struct.unpack_from("<H", head, 6)[0], 8


def skip_sequence(reader: ChunkReader, position: int, implicit: bool, depth: int = 0) -> int:
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
        if length != UNDEFINED_LENGTH:
            position += length
            continue
        while True:  # an undefined-length item: its elements up to the item delimitation item
            found = element_header(reader, position, implicit)
            if found is None:
                raise ValueError("item cut short")
            group, element, vr, length, size = found
            position += size
            if (group, element) == (0xFFFE, 0xE00D):
                break
            if length == UNDEFINED_LENGTH:
                position = skip_sequence(reader, position, implicit or vr == b"UN", depth + 1)
            else:
                position += length


def _file_meta(reader: ChunkReader) -> tuple[int, str] | None:
    """(position after the File Meta group 0002, TransferSyntaxUID (0002,0010)); None without 'DICM'."""
    if reader.get(128, 4) != b"DICM":
        return None
    position, transfer_syntax = 132, ""
    data = reader.data  # the first chunk, from byte 0: File Meta almost always ends inside it
    while position + 12 <= len(data) and data[position] == 2 and data[position + 1] == 0:
        group, element, vr, length = _EXPLICIT_HEAD.unpack_from(data, position)  # PS3.10 §7.1: explicit VR LE
        size = 8
        if vr in LONG_LENGTH_VRS:
            length, size = _LONG_LENGTH.unpack_from(data, position + 8)[0], 12
        elif vr not in _SHORT_VRS:
            raise ValueError("invalid VR")
        if element == 0x0010:
            transfer_syntax = reader.get(position + size, length).decode("ascii", "replace").strip(" \x00")
        position += size + length
    while True:  # the rest of a File Meta group longer than the first chunk
        if reader.base + len(reader.data) < position + 12:
            reader.get(position, 12)
        data, at = reader.data, position - reader.base
        if data[at : at + 2] != b"\x02\x00":
            return position, transfer_syntax
        if len(data) - at < 8:
            raise ValueError("element header cut short")
        group, element, vr, length = _EXPLICIT_HEAD.unpack_from(data, at)
        size = 8
        if vr in LONG_LENGTH_VRS:
            if len(data) - at < 12:
                raise ValueError("element header cut short")
            length, size = _LONG_LENGTH.unpack_from(data, at + 8)[0], 12
        elif vr not in _SHORT_VRS:
            raise ValueError("invalid VR")
        if element == 0x0010:
            transfer_syntax = reader.get(position + size, length).decode("ascii", "replace").strip(" \x00")
        position += size + length


def scan_header(handle, file_size: int, wanted: Iterable[int], stop_after: int | None = None) -> RawHeader | None:
    """Walk a Part-10 file's elements up to PixelData with ``struct``, keeping the raw bytes of
    ``wanted`` tags — many times faster than a full parse. With ``stop_after`` the walk ends
    after that tag (no PixelData check).

    Returns None for anything it does not handle: callers then fall back to pydicom.
    """
    wanted = frozenset(wanted)
    stop = _NO_STOP if stop_after is None else stop_after
    reader = ChunkReader(handle)
    try:
        meta = _file_meta(reader)
        if meta is None:
            return None
        position, transfer_syntax = meta
        if not transfer_syntax.startswith(IMPLICIT_LITTLE) or transfer_syntax in (EXPLICIT_BIG, DEFLATED):
            return None
        implicit = transfer_syntax == IMPLICIT_LITTLE
        header = RawHeader({}, transfer_syntax, implicit, True)
        walk = _walk_any if implicit else _walk_explicit
        return walk(reader, position, header, wanted, stop, file_size)
    except (ValueError, struct.error):
        return None


def _walk_any(reader: ChunkReader, position: int, header: RawHeader, wanted: frozenset, stop: int,
              file_size: int) -> RawHeader | None:
    """:func:`scan_header`'s walk for implicit or explicit VR little endian, one element at a time
    (the reference :func:`_walk_explicit` must agree with)."""
    implicit = header.implicit_vr
    values = header.values
    data, base = reader.data, reader.base
    buffered = len(data)
    while True:
        at = position - base
        if at + 12 > buffered:  # past the buffered bytes: read on (or seek)
            reader.get(position, 12)
            data, base = reader.data, reader.base
            buffered, at = len(data), position - base
            if buffered - at <= 0:
                header.pixel_problem = NO_PIXEL_DATA
                return header
            if buffered - at < 8:
                raise ValueError("element header cut short")
        vr = None
        size = 8
        if implicit:
            group, element, length = _IMPLICIT_HEAD.unpack_from(data, at)
        else:
            group, element, vr, length = _EXPLICIT_HEAD.unpack_from(data, at)
            if group == 0xFFFE:  # items and delimiters have no VR, 32-bit length
                length = _LONG_LENGTH.unpack_from(data, at + 4)[0]
                vr = None
            elif vr in LONG_LENGTH_VRS:
                if buffered - at < 12:
                    raise ValueError("element header cut short")
                length = _LONG_LENGTH.unpack_from(data, at + 8)[0]
                size = 12
            elif vr not in _SHORT_VRS:
                raise ValueError("invalid VR")
        tag = (group << 16) | element
        if tag >= _FIRST_PIXEL_TAG or tag > stop:  # rare: the end of the walk, or a tag after it
            if tag > stop:
                return header
            if tag == PIXEL_DATA:
                header.pixel_length = None if length == UNDEFINED_LENGTH else length
                header.pixel_offset = position + size
                header.pixel_bytes_left = file_size - position - size
                return header
            if tag in FLOAT_PIXEL_DATA:
                header.pixel_problem = FLOAT_PIXELS
                return header
        position += size
        if length == UNDEFINED_LENGTH:
            position = skip_sequence(reader, position, implicit or vr == b"UN")
            data, base = reader.data, reader.base
            buffered = len(data)
            continue
        if tag in wanted:
            start = position - base
            if start + length <= buffered:
                values[tag] = data[start : start + length]
            else:
                value = reader.get(position, length)
                data, base = reader.data, reader.base
                buffered = len(data)
                if len(value) < length:
                    return None
                values[tag] = value
        position += length
        if position > file_size:
            return None


def _walk_explicit(reader: ChunkReader, position: int, header: RawHeader, wanted: frozenset, stop: int,
                   file_size: int) -> RawHeader | None:
    """:func:`scan_header`'s walk for explicit VR little endian, the usual encoding, with the least
    work per element: a short-VR element is one unpack, two set lookups and two additions; the
    rest (long VRs, undefined lengths, items, the end of the walk) is handled off that path."""
    values = header.values
    watched = _WATCHED.get(wanted)
    if watched is None:
        watched = _WATCHED[wanted] = wanted | _PIXEL_TAGS
    data, base = reader.data, reader.base
    buffered, at, entry = len(data), position - base, position
    while True:
        if at + 12 > buffered:  # past the buffered bytes: read on (or seek)
            position = base + at
            if position > file_size and position != entry:  # an element's value ran past the end
                return None
            reader.get(position, 12)
            data, base = reader.data, reader.base
            buffered, at = len(data), position - base
            if buffered - at <= 0:
                header.pixel_problem = NO_PIXEL_DATA
                return header
            if buffered - at < 8:
                raise ValueError("element header cut short")
        group, element, vr, length = _EXPLICIT_HEAD.unpack_from(data, at)
        tag = (group << 16) | element
        if vr in _SHORT_VRS and group != 0xFFFE:
            at += 8
        elif group == 0xFFFE or vr in LONG_LENGTH_VRS:
            if group == 0xFFFE:  # items and delimiters have no VR, 32-bit length
                length, vr = _LONG_LENGTH.unpack_from(data, at + 4)[0], None
                at += 8
            else:
                if buffered - at < 12:
                    raise ValueError("element header cut short")
                length = _LONG_LENGTH.unpack_from(data, at + 8)[0]
                at += 12
            if length == UNDEFINED_LENGTH and tag <= stop and tag not in _PIXEL_TAGS:  # a sequence to skip
                position = skip_sequence(reader, base + at, vr == b"UN")
                data, base = reader.data, reader.base
                buffered, at = len(data), position - base
                continue
        else:
            raise ValueError("invalid VR")
        if tag > stop:
            return header
        if tag in watched:
            if tag == PIXEL_DATA:
                header.pixel_length = None if length == UNDEFINED_LENGTH else length
                header.pixel_offset = base + at
                header.pixel_bytes_left = file_size - (base + at)
                return header
            if tag in FLOAT_PIXEL_DATA:
                header.pixel_problem = FLOAT_PIXELS
                return header
            if at + length <= buffered:
                values[tag] = data[at : at + length]
            else:
                value = reader.get(base + at, length)
                if len(value) < length:
                    return None
                values[tag] = value
                position = base + at + length
                data, base = reader.data, reader.base
                buffered, at = len(data), position - base
                continue
        at += length
