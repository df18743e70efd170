"""medfake.io.header: the struct-based header pass against pydicom's, and its fallback."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid

from medfake.io import header
from medfake.io.series import DICOMSeries
from dicom_factory import phantom_volume, write_ct_slice


def test_header_tag_numbers_match_the_dictionary():
    from pydicom.datadict import tag_for_keyword

    assert {keyword: tag_for_keyword(keyword) for keyword in header.HEADER_TAGS} == header.HEADER_TAGS


def _with_sequences(path, undefined: bool):
    """Add nested sequences before the wanted tags of group 0020/0028 (so the walk must skip them)."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(path)
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator = "123", "DCM"
    item = Dataset()
    item.ReferencedSOPInstanceUID = generate_uid()
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item, Dataset()])
    for element_item in (item, inner):
        element_item.is_undefined_length_sequence_item = undefined
    ds["ReferencedImageSequence"].is_undefined_length = undefined
    item["PurposeOfReferenceCodeSequence"].is_undefined_length = undefined
    ds.add_new(0x00091010, "UN", b"private bytes")
    ds.save_as(path)
    return path


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless])
@pytest.mark.parametrize("undefined", [True, False])
def test_fast_header_pass_matches_pydicom(tmp_path, monkeypatch, syntax, undefined):
    path = write_ct_slice(tmp_path / "1.dcm", phantom_volume(1)[0], 2.5, 7, "1.2.3.4", slope=2.0, intercept=-10.0,
                          transfer_syntax=syntax)
    _with_sequences(path, undefined)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        fast = header.scan_header(handle, size, header.HEADER_TAGS.values())
        slow = header._pydicom_header(path, handle, size)
    assert fast is not None
    assert fast.values == slow.values
    assert len(fast.values) == 15  # every wanted tag but NumberOfFrames
    assert (fast.pixel_length, fast.pixel_bytes_left, fast.pixel_offset, fast.transfer_syntax) == (
        slow.pixel_length, slow.pixel_bytes_left, slow.pixel_offset, slow.transfer_syntax)
    quick = header.read_header(path)
    monkeypatch.setattr(header, "scan_header", lambda *args, **kwargs: None)
    assert header.read_header(path) == quick
    assert quick.position[2] == 2.5 and quick.instance_number == 7 and quick.slope == 2.0


def test_file_without_preamble_uses_the_pydicom_path(tmp_path):
    import pydicom

    path = write_ct_slice(tmp_path / "1.dcm", phantom_volume(1)[0], 1.0, 1, "1.2.3")
    ds = pydicom.dcmread(path)
    del ds.file_meta
    ds.preamble = None
    ds.save_as(path, enforce_file_format=False, implicit_vr=True, little_endian=True)
    with open(path, "rb") as handle:
        assert header.scan_header(handle, path.stat().st_size, header.HEADER_TAGS.values()) is None
    found = header.read_header(path)
    assert found.transfer_syntax == ImplicitVRLittleEndian and found.series_uid == "1.2.3"
    np.testing.assert_array_equal(DICOMSeries.open([path]).read_stored()[0], phantom_volume(1)[0])
