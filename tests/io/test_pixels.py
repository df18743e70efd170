"""medfake.io.pixels: decoders available or missing, and the one-line hint for a missing codec."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from medfake.core.errors import DICOMError
from medfake.io import pixels
from medfake.io.series import DICOMSeries
from dicom_factory import phantom_volume, write_series


def test_decoder_support():
    assert pixels.decoder_support(RLELossless) == "available"
    assert pixels.decoder_support(ExplicitVRLittleEndian) == "available"
    assert pixels.decoder_support("1.2.3.4.5.6") == "unsupported"
    assert pixels.transfer_syntax_name(RLELossless) == "RLE Lossless (1.2.840.10008.1.2.5)"


def test_missing_codec_gives_one_line_with_the_extra(tmp_path, monkeypatch):
    from pydicom.pixels import get_decoder

    write_series(tmp_path, phantom_volume(2), transfer_syntax=RLELossless)
    series = DICOMSeries.open(tmp_path)
    monkeypatch.setattr(get_decoder(RLELossless), "_available", {})  # as if no plugin were installed
    with pytest.raises(DICOMError) as info:
        series.read_hu([0])
    message = str(info.value)
    assert "\n" not in message
    assert "RLE Lossless (1.2.840.10008.1.2.5)" in message
    assert "pip install 'medfake[codecs]'" in message


# ------------------------------------------------- native reads: the same array as pydicom's


def _write_raw(path, raw: bytes, rows: int, columns: int, syntax=ExplicitVRLittleEndian, after_pixels: bool = False,
               **tags):
    """One CT slice whose PixelData (7FE0,0010) is exactly ``raw``; ``tags`` set or (None) delete elements."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality = "1.2.3.4", "CT"
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 1.5], [1, 0, 0, 0, 1, 0]
    ds.InstanceNumber, ds.Rows, ds.Columns = 1, rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    for keyword, value in tags.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.add_new(0x7FE00010, "OB" if ds.BitsAllocated == 8 else "OW", raw)
    if after_pixels:
        ds.add_new(0xFFFCFFFC, "OB", b"\0\0")  # Data Set Trailing Padding after PixelData
    ds.save_as(path, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True)
    return pydicom.dcmread(path)


_RNG = np.random.default_rng(3)
_U16 = _RNG.integers(0, 65536, size=(6, 5), dtype=np.uint16)  # every bit used, above BitsStored too

NATIVE_CASES = {
    "signed 16": (_U16.view(np.int16).tobytes(), 6, 5, {}),
    "unsigned 16, slope and intercept": (_U16.tobytes(), 6, 5,
                                         {"PixelRepresentation": 0, "RescaleSlope": 2.5, "RescaleIntercept": -10.25}),
    "unsigned 12 of 16 (high bits cleared)": (_U16.tobytes(), 6, 5,
                                              {"PixelRepresentation": 0, "BitsStored": 12, "HighBit": 11}),
    "signed 12 of 16 (sign-extended)": (_U16.tobytes(), 6, 5, {"BitsStored": 12, "HighBit": 11}),
    "no rescale tags": (_U16.tobytes(), 6, 5, {"RescaleSlope": None, "RescaleIntercept": None}),
    "implicit VR": (_U16.tobytes(), 6, 5, {"syntax": ImplicitVRLittleEndian}),
    "8 bit, odd length padded": (bytes((250 + i) % 256 for i in range(15)) + b"\0", 3, 5,
                                 {"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7, "PixelRepresentation": 0}),
    "signed 8 of 8": (_U16.tobytes()[:30], 6, 5, {"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7}),
    "MONOCHROME1, NumberOfFrames 1": (_U16.tobytes(), 6, 5, {"PhotometricInterpretation": "MONOCHROME1",
                                                             "NumberOfFrames": 1}),
}


@pytest.mark.parametrize("case", NATIVE_CASES)
def test_native_read_is_pydicoms_pixel_array_and_hu(tmp_path, case):
    from medfake.io.header import read_header
    from medfake.io.transforms import to_hu

    raw, rows, columns, tags = NATIVE_CASES[case]
    tags = dict(tags)
    ds = _write_raw(tmp_path / "1.dcm", raw, rows, columns, syntax=tags.pop("syntax", ExplicitVRLittleEndian), **tags)
    header = read_header(tmp_path / "1.dcm")
    assert header.pixels is not None  # read with numpy, not pydicom
    expected = ds.pixel_array
    stored = pixels.read_native(header.path, header.pixels, rows, columns)
    assert stored.dtype == expected.dtype and stored.shape == expected.shape
    np.testing.assert_array_equal(stored, expected)
    hu = DICOMSeries.open([header.path]).read_hu()[0]
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    assert hu.tobytes() == to_hu(expected, slope, intercept).tobytes()  # bit for bit


def test_unused_bits_really_differ_from_the_raw_bytes():
    """The 12-of-16 cases above mean something: the raw values use bits above BitsStored."""
    assert (_U16 >= 4096).any() and (_U16.view(np.int16) < 0).any()


FALLBACK_CASES = {
    "element after PixelData": (_U16.tobytes(), {"after_pixels": True}),
    "a second frame's bytes": (_U16.tobytes() * 2, {}),
    "no PhotometricInterpretation": (_U16.tobytes(), {"PhotometricInterpretation": None}),
    "no BitsStored": (_U16.tobytes(), {"BitsStored": None}),
    "PALETTE COLOR": (_U16.tobytes(), {"PhotometricInterpretation": "PALETTE COLOR"}),
    "NumberOfFrames 2": (_U16.tobytes(), {"NumberOfFrames": 2}),
    "PixelRepresentation 2": (_U16.tobytes(), {"PixelRepresentation": 2}),
}


@pytest.mark.parametrize("case", FALLBACK_CASES)
def test_unusual_files_are_left_to_pydicom(tmp_path, case):
    from medfake.io.header import read_header

    raw, tags = FALLBACK_CASES[case]
    _write_raw(tmp_path / "1.dcm", raw, 6, 5, **tags)
    try:
        header = read_header(tmp_path / "1.dcm")
    except DICOMError:
        return  # refused by the header pass, as before
    assert header.pixels is None


def test_compressed_and_missing_pixel_module_read_as_before(tmp_path):
    """Compressed files go to pydicom; a file pydicom can't decode keeps its one-line error."""
    from medfake.io.header import read_header

    write_series(tmp_path / "rle", phantom_volume(2), transfer_syntax=RLELossless)
    assert read_header(tmp_path / "rle" / "0.dcm").pixels is None
    np.testing.assert_array_equal(DICOMSeries.open(tmp_path / "rle").read_stored(), phantom_volume(2))
    (tmp_path / "bad").mkdir()
    _write_raw(tmp_path / "bad" / "1.dcm", _U16.tobytes(), 6, 5, PhotometricInterpretation=None)
    with pytest.raises(DICOMError) as info:
        DICOMSeries.open(tmp_path / "bad").read_hu()
    assert "cannot decode PixelData (7FE0,0010)" in str(info.value) and "\n" not in str(info.value)


def test_file_cut_after_the_header_pass_is_one_line(tmp_path):
    _write_raw(tmp_path / "1.dcm", _U16.tobytes(), 6, 5)
    series = DICOMSeries.open([tmp_path / "1.dcm"])
    size = (tmp_path / "1.dcm").stat().st_size
    (tmp_path / "1.dcm").write_bytes((tmp_path / "1.dcm").read_bytes()[: size - 7])
    with pytest.raises(DICOMError, match=r"1\.dcm: cannot decode PixelData \(7FE0,0010\): 53 of 60 bytes"):
        series.read_hu()


def test_phantom_files_read_natively_equal_pydicom(tmp_path):
    """Every file of a small phantom (CT-GAN and LIDC style): numpy's read is pydicom's array, and a
    series' HU are the same bytes whether its slices are read natively or through pydicom."""
    import dataclasses

    import pydicom

    from medfake.data.phantom import write_phantom
    from medfake.io.header import read_header

    root = tmp_path / "phantom"
    write_phantom(root, scans=2, lidc_scans=1, size=32, slices=32, seed=5)
    files = sorted(root.rglob("*.dcm"))
    assert len(files) > 60
    for path in files:
        header = read_header(path)
        assert header.pixels is not None, path.name
        expected = pydicom.dcmread(path).pixel_array
        stored = pixels.read_native(path, header.pixels, header.rows, header.columns)
        assert stored.dtype == expected.dtype
        np.testing.assert_array_equal(stored, expected)
    folder = files[0].parent
    native = DICOMSeries.open(folder)
    plain = DICOMSeries.from_headers([dataclasses.replace(h, pixels=None) for h in native.headers], [], folder)
    assert native.read_hu().tobytes() == plain.read_hu().tobytes()
    buffer = np.empty((3, native.rows, native.columns), dtype=np.float32)
    assert native.read_hu([4, 0, 9], out=buffer) is buffer
    assert buffer.tobytes() == plain.read_hu([4, 0, 9]).tobytes()
