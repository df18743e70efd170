"""medfake.io.elements: the fast explicit-VR walk agrees with the element-by-element reference,
on good files and on damaged ones (cut, bytes flipped), and with pydicom on PixelData's offset."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from medfake.io import elements
from medfake.io.header import HEADER_TAGS
from dicom_factory import phantom_volume, write_ct_slice

WANTED = frozenset(HEADER_TAGS.values())


def _walk(walker, data: bytes, stop: int | None = None):
    """(result fields) of one walk over ``data``; None when the walk gives up (pydicom's turn)."""
    reader = elements.ChunkReader(io.BytesIO(data))
    try:
        found = elements._file_meta(reader)
        if found is None:
            return "no DICM"
        position, syntax = found
        header = elements.RawHeader({}, syntax, False, True)
        result = walker(reader, position, header, WANTED, elements._NO_STOP if stop is None else stop, len(data))
    except (ValueError, Exception) as exc:  # struct.error and ValueError are scan_header's None
        return type(exc).__name__
    if result is None:
        return None
    return (result.values, result.pixel_length, result.pixel_offset, result.pixel_bytes_left, result.pixel_problem)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> bytes:
    """An explicit VR file with a nested undefined-length sequence, a private UN and PixelData."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    path = write_ct_slice(tmp_path_factory.mktemp("e") / "1.dcm", phantom_volume(1, size=8)[0], 2.5, 7, "1.2.3",
                          transfer_syntax=ExplicitVRLittleEndian)
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4.5"
    ds.ReferencedImageSequence = Sequence([item, Dataset()])
    ds["ReferencedImageSequence"].is_undefined_length = True
    item.is_undefined_length_sequence_item = True
    ds.add_new(0x00091010, "UN", b"private bytes")
    ds.save_as(path)
    return path.read_bytes()


def test_fast_walk_finds_what_pydicom_finds(sample):
    import pydicom

    values, length, offset, left, problem = _walk(elements._walk_explicit, sample)
    ds = pydicom.dcmread(io.BytesIO(sample))
    assert problem is None and length == len(ds.PixelData) == left
    assert sample[offset : offset + length] == ds.PixelData
    assert values[HEADER_TAGS["ImagePositionPatient"]].startswith(b"-100")
    assert _walk(elements._walk_explicit, sample, stop=HEADER_TAGS["SeriesInstanceUID"])[0].keys() <= {
        HEADER_TAGS["Modality"], HEADER_TAGS["SeriesInstanceUID"]}


def test_fast_walk_agrees_with_the_reference_on_cut_files(sample):
    for keep in range(0, len(sample) + 1, 7):
        cut = sample[:keep]
        assert _walk(elements._walk_explicit, cut) == _walk(elements._walk_any, cut), keep
        assert _walk(elements._walk_explicit, cut, stop=0x0020000E) == _walk(elements._walk_any, cut, stop=0x0020000E)


def test_fast_walk_agrees_with_the_reference_on_damaged_bytes(sample):
    rng = np.random.default_rng(0)
    end = sample.index(b"\xe0\x7f\x10\x00") + 12  # the headers, up to PixelData's
    for _ in range(600):
        damaged = bytearray(sample)
        for where in rng.integers(132, end, size=int(rng.integers(1, 4))):
            damaged[where] = int(rng.integers(0, 256))
        damaged = bytes(damaged)
        assert _walk(elements._walk_explicit, damaged) == _walk(elements._walk_any, damaged)
