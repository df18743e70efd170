"""Pixel decoding of one DICOM file (stored values, no rescale) and which decoders are installed.

A compressed transfer syntax (0002,0010) with no decoder installed is named in one line with the
extra that provides one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medfake.core.errors import DICOMError
from medfake.io.header import one_line

CODECS_HINT = "pip install 'medfake[codecs]'"


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
        raise DICOMError(f"{path}: cannot decode PixelData (7FE0,0010): {one_line(exc)}") from None


def decoder_support(transfer_syntax: str) -> str:
    """'available', 'missing' (pydicom knows the syntax but no plugin is installed) or 'unsupported'."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(transfer_syntax)
    except (NotImplementedError, ValueError):
        return "unsupported"
    return "available" if decoder.is_available else "missing"
