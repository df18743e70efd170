"""Pixel decoding of one DICOM file (stored values, no rescale) and which decoders are installed.

Uncompressed little-endian files whose header pass found a plain single frame (a
:class:`~medfake.io.header.NativePixels`) are read with numpy at the PixelData (7FE0,0010) offset:
the same array as pydicom's ``pixel_array``, without parsing the file again. Everything else goes
through pydicom. A compressed transfer syntax (0002,0010) with no decoder installed is named in
one line with the extra that provides one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medfake.core.errors import DICOMError
from medfake.io.header import NativePixels, one_line

CODECS_HINT = "pip install 'medfake[codecs]'"


def transfer_syntax_name(uid: str) -> str:
    """'RLE Lossless (1.2.840.10008.1.2.5)' for a transfer syntax UID."""
    from pydicom.uid import UID

    name = UID(uid).name if uid else "unknown transfer syntax"
    return f"{name} ({uid})" if name != uid else uid


def read_native(path: str | os.PathLike, pixels: NativePixels, rows: int, columns: int,
                out: np.ndarray | None = None) -> np.ndarray:
    """Stored values (rows, columns) read straight from the file, as pydicom's ``pixel_array``.

    As pydicom does for native data, bits above BitsStored (0028,0101) are shifted out: cleared
    for unsigned values, sign-extended for two's complement ones (PixelRepresentation (0028,0103) 1).
    ``out`` (C-contiguous, ``pixels.dtype``, rows × columns values) is filled instead of a new array.
    """
    stored = np.empty((rows, columns), dtype=pixels.dtype) if out is None else out.reshape(rows, columns)
    view = memoryview(stored).cast("B")
    got = 0
    try:
        with open(path, "rb", buffering=0) as handle:
            handle.seek(pixels.offset)
            while got < len(view):
                count = handle.readinto(view[got:])
                if not count:
                    break
                got += count
    except OSError as exc:
        raise DICOMError(f"{path}: cannot decode PixelData (7FE0,0010): {one_line(exc)}") from None
    if got != len(view):  # the file shrank since its header was read
        raise DICOMError(f"{path}: cannot decode PixelData (7FE0,0010): {got} of {len(view)} bytes in the file")
    if pixels.unused_bits and pixels.dtype[1] == "u":  # the shifts clear them: one mask does the same
        np.bitwise_and(stored, pixels.stored_range[1], out=stored)
    elif pixels.unused_bits:
        np.left_shift(stored, pixels.unused_bits, out=stored)
        np.right_shift(stored, pixels.unused_bits, out=stored)
    return stored


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
        raise DICOMError(f"{path}: cannot decode PixelData (7FE0,0010): {one_line(exc)}") from None


def decoder_support(transfer_syntax: str) -> str:
    """'available', 'missing' (pydicom knows the syntax but no plugin is installed) or 'unsupported'."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(transfer_syntax)
    except (NotImplementedError, ValueError):
        return "unsupported"
    return "available" if decoder.is_available else "missing"
