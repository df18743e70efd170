"""medfake.io.dicom: header pass, ordering, problems, HU, windowing, resizing, codecs."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid

from medfake.io import dicom
from medfake.io.dicom import DICOMSeries, project_positions, resize, slice_normal, to_hu, window, window_uint8
from medfake.core.errors import DICOMError, UserError
from dicom_factory import phantom_volume, truncate, write_ct_slice, write_series


def _means(hu: np.ndarray) -> np.ndarray:
    """Slice i of phantom_volume has mean ≈ 100·i (+25), so means identify slices."""
    return np.round((hu.mean(axis=(1, 2)) + 1024 - 25) / 100).astype(int)


# ----------------------------------------------------------------------------- ordering


def test_orders_by_position_when_file_numbers_disagree(tmp_path):
    volume = phantom_volume(10)
    names = [f"{n}.dcm" for n in (3, 0, 7, 1, 9, 2, 8, 4, 6, 5)]  # slice i (z = 1.25·i) in file names[i]
    write_series(tmp_path, volume, names=names)
    series = DICOMSeries.open(tmp_path)
    assert series.ordering == "position"
    assert len(series) == 10
    assert list(_means(series.read_hu())) == list(range(10))
    assert series.file_numbers == [3, 0, 7, 1, 9, 2, 8, 4, 6, 5]
    assert series.file_order == "mixed"
    assert any("file numbers do not follow" in p for p in series.problems)
    np.testing.assert_allclose(series.slice_positions, 1.25 * np.arange(10))
    assert series.spacing == pytest.approx(1.25)
    assert series.index_of_file_number(7) == 2
    with pytest.raises(KeyError):
        series.index_of_file_number(42)


def test_file_numbers_sorted_numerically_and_descending_order_is_fine(tmp_path):
    volume = phantom_volume(12)
    names = [f"{11 - i}.dcm" for i in range(12)]  # highest z in 0.dcm, as some scanners write
    write_series(tmp_path, volume, names=names)
    series = DICOMSeries.open(tmp_path)
    assert series.file_order == "descending"
    assert series.file_order_problem() is None
    assert [p.name for p in series.paths][:3] == ["11.dcm", "10.dcm", "9.dcm"]
    assert not [p for p in series.problems if "file numbers" in p]


def test_oblique_orientation_projects_on_the_normal(tmp_path):
    angle = np.deg2rad(30)
    iop = (1.0, 0.0, 0.0, 0.0, float(np.cos(angle)), float(np.sin(angle)))
    normal = slice_normal(iop)
    column = np.array(iop[3:])
    z = np.arange(8) * 2.0
    shifts = np.array([30, -20, 10, 0, -40, 25, -5, 15], dtype=float)  # in-plane: changes IPP z, not the projection
    ipp = z[:, None] * normal + shifts[:, None] * column
    assert list(np.argsort(ipp[:, 2])) != list(range(8)), "naive z order must differ for the test to mean anything"
    volume = phantom_volume(8)
    uid = generate_uid()
    for i in range(8):
        write_ct_slice(tmp_path / f"{i}.dcm", volume[i], None, i + 1, uid, orientation=iop, position=ipp[i])
    series = DICOMSeries.open(tmp_path)
    assert series.ordering == "position"
    assert list(_means(series.read_hu())) == list(range(8))
    np.testing.assert_allclose(series.slice_positions - series.slice_positions[0], z, atol=1e-3)
    np.testing.assert_allclose(project_positions(ipp, iop), z, atol=1e-9)


def test_slice_normal_maths():
    np.testing.assert_allclose(slice_normal((1, 0, 0, 0, 1, 0)), [0, 0, 1])
    np.testing.assert_allclose(slice_normal((0, 1, 0, 0, 0, -1)), [-1, 0, 0])  # sagittal
    with pytest.raises(ValueError):
        slice_normal((1, 0, 0, 1, 0, 0))
    with pytest.raises(ValueError):
        slice_normal((1, 0, 0))


def test_instance_number_fallback_without_positions(tmp_path):
    volume = phantom_volume(8)
    write_series(tmp_path, volume, positions=[None] * 8, instance_numbers=[8 - i for i in range(8)])
    series = DICOMSeries.open(tmp_path)
    assert series.ordering == "instance"
    assert series.instance_numbers == list(range(1, 9))
    assert list(_means(series.read_hu())) == list(range(7, -1, -1))
    assert np.isnan(series.spacing)
    assert any("ordered by InstanceNumber" in p for p in series.problems)


def test_file_number_fallback_sorts_numerically(tmp_path):
    volume = phantom_volume(12)
    write_series(tmp_path, volume, positions=[None] * 12, instance_numbers=[None] * 12)
    series = DICOMSeries.open(tmp_path)
    assert series.ordering == "file"
    assert series.file_numbers == list(range(12))  # 10.dcm after 9.dcm, not after 1.dcm
    assert list(_means(series.read_hu())) == list(range(12))


# ----------------------------------------------------------------------------- problems


def test_duplicated_position_keeps_lower_instance_number(tmp_path):
    volume = phantom_volume(9)
    positions = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 3.0]
    instances = [1, 2, 3, 14, 5, 6, 7, 8, 4]  # 8.dcm (IN 4) and 3.dcm (IN 14) share z = 3
    write_series(tmp_path, volume, positions=positions, instance_numbers=instances)
    series = DICOMSeries.open(tmp_path)
    assert len(series) == 8
    assert "3.dcm" not in [p.name for p in series.paths]
    assert series.paths[3].name == "8.dcm"
    assert ("3.dcm", "same position as 8.dcm, which has the lower InstanceNumber") in series.skipped
    assert any(p.startswith("duplicated position 3.00 mm: kept 8.dcm") for p in series.problems)


def test_gap_is_reported(tmp_path):
    write_series(tmp_path, phantom_volume(8), positions=[0, 1, 2, 3, 6, 7, 8, 9])
    series = DICOMSeries.open(tmp_path)
    assert series.spacing == pytest.approx(1.0)
    assert "gap of 3.00 mm between 3.dcm and 4.dcm (median spacing 1.00 mm)" in series.problems
    assert not any("uneven" in p for p in series.problems)


def test_uneven_spacing_is_reported_and_even_is_not(tmp_path):
    write_series(tmp_path / "uneven", phantom_volume(8), positions=[0, 1, 2, 3.3, 4.3, 5.3, 6.0, 7.0])
    write_series(tmp_path / "even", phantom_volume(8))
    uneven = DICOMSeries.open(tmp_path / "uneven")
    even = DICOMSeries.open(tmp_path / "even")
    assert any(p.startswith("uneven slice spacing: 0.70–1.30 mm") for p in uneven.problems)
    assert not any("gap" in p for p in uneven.problems)
    assert even.problems == []


def test_mixed_sizes_keep_the_majority(tmp_path):
    uid = generate_uid()
    write_series(tmp_path, phantom_volume(8, 16), series_uid=uid)
    write_series(tmp_path, phantom_volume(2, 32), series_uid=uid, positions=[20, 21], names=["8.dcm", "9.dcm"])
    series = DICOMSeries.open(tmp_path)
    assert (series.rows, series.columns) == (16, 16)
    assert len(series) == 8
    assert ("9.dcm", "image size 32×32 differs from the series' 16×16") in series.skipped
    assert series.read_hu().shape == (8, 16, 16)


def test_mixed_sizes_without_majority_is_an_error(tmp_path):
    uid = generate_uid()
    write_series(tmp_path, phantom_volume(4, 16), series_uid=uid)
    write_series(tmp_path, phantom_volume(4, 32), series_uid=uid, positions=[9, 10, 11, 12], names=[f"{i}.dcm" for i in range(4, 8)])
    with pytest.raises(DICOMError, match=r"mixed image sizes .* no size holds a majority"):
        DICOMSeries.open(tmp_path)


def test_non_ct_series_is_refused(tmp_path):
    write_series(tmp_path, phantom_volume(3), modality="CR")
    with pytest.raises(DICOMError, match=r"Modality is CR, not CT"):
        DICOMSeries.open(tmp_path)


def test_folder_with_two_series_keeps_the_largest(tmp_path):
    write_series(tmp_path, phantom_volume(8))
    write_series(tmp_path, phantom_volume(3), names=["a.dcm", "b.dcm", "c.dcm"])
    series = DICOMSeries.open(tmp_path)
    assert len(series) == 8
    assert sorted(name for name, _ in series.skipped) == ["a.dcm", "b.dcm", "c.dcm"]
    assert any(p.startswith("folder holds 2 series") for p in series.problems)


def test_bad_files_are_skipped_with_reasons(tmp_path):
    paths = write_series(tmp_path, phantom_volume(10))
    (tmp_path / "notes.txt").write_text("scan notes, not DICOM\n")
    truncate(paths[3], paths[3].stat().st_size - 100)  # pixel data cut short
    truncate(paths[5], 200)  # cut inside the header
    (tmp_path / "7.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)  # corrupt
    write_ct_slice(tmp_path / "9.dcm", phantom_volume(1)[0], 11.25, 10, "1.2.3.4", with_pixels=False)
    series = DICOMSeries.open(tmp_path)
    reasons = dict(series.skipped)
    assert set(reasons) == {"notes.txt", "3.dcm", "5.dcm", "7.dcm", "9.dcm"}
    assert reasons["notes.txt"] == "not a DICOM file"
    assert reasons["3.dcm"].startswith("PixelData (7FE0,0010) truncated")
    assert reasons["9.dcm"] == "no PixelData (7FE0,0010): missing, or the file is truncated"
    assert reasons["5.dcm"] == reasons["9.dcm"]
    assert len(series) == 6
    assert series.read_hu().shape == (6, 16, 16)
    assert "5 files skipped (see skipped files)" in series.problems
    text = " ".join(series.problems) + str(series.skipped)
    assert "PHANTOM" not in text and "TEST" not in text


def test_empty_and_unreadable_folders_are_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DICOMError, match="empty folder"):
        DICOMSeries.open(empty)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.txt").write_text("hello")
    (junk / "b.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(DICOMError, match=r"junk: no readable DICOM image among 2 files \(e\.g\. a\.txt: not a DICOM file\)"):
        DICOMSeries.open(junk)
    with pytest.raises(UserError, match="no such file or folder"):
        DICOMSeries.open(tmp_path / "missing")


def test_file_number_gaps_are_reported(tmp_path):
    write_series(tmp_path, phantom_volume(5), names=["0.dcm", "1.dcm", "2.dcm", "5.dcm", "6.dcm"])
    series = DICOMSeries.open(tmp_path)
    assert "file numbers 0–6 have 2 missing, first 3" in series.problems


# ----------------------------------------------------------------------------- pixels and HU


def test_hu_uses_slope_and_intercept(tmp_path):
    volume = phantom_volume(4)
    write_series(tmp_path / "scaled", volume, slope=2.0, intercept=-1000.0)
    write_series(tmp_path / "plain", volume, slope=None, intercept=None)
    scaled = DICOMSeries.open(tmp_path / "scaled")
    plain = DICOMSeries.open(tmp_path / "plain")
    hu = scaled.read_hu()
    assert hu.dtype == np.float32 and hu.shape == (4, 16, 16)
    np.testing.assert_array_equal(hu, volume * 2.0 - 1000.0)
    np.testing.assert_array_equal(plain.read_hu(), volume.astype(np.float32))
    assert any("RescaleSlope/RescaleIntercept" in p for p in plain.problems)
    assert not any("RescaleSlope" in p for p in scaled.problems)
    np.testing.assert_array_equal(scaled.read_stored([1]), volume[1:2])


def test_read_only_requested_slices(tmp_path, monkeypatch):
    volume = phantom_volume(10)
    write_series(tmp_path, volume)
    series = DICOMSeries.open(tmp_path)
    decoded = []
    real_decode = dicom.decode_stored
    monkeypatch.setattr(dicom, "decode_stored", lambda path, ts="": decoded.append(path.name) or real_decode(path, ts))
    hu = series.read_hu([7, 2])
    assert decoded == ["7.dcm", "2.dcm"]
    np.testing.assert_array_equal(hu, volume[[7, 2]] - 1024.0)
    assert series.read_hu([]).shape == (0, 16, 16)
    with pytest.raises(IndexError):
        series.read_hu([10])


def test_implicit_vr_and_single_file(tmp_path):
    paths = write_series(tmp_path, phantom_volume(3), transfer_syntax=ImplicitVRLittleEndian)
    series = DICOMSeries.open(paths[1])
    assert len(series) == 1
    assert series.transfer_syntax == ImplicitVRLittleEndian
    np.testing.assert_array_equal(series.read_hu()[0], phantom_volume(3)[1] - 1024.0)


def test_decode_failure_after_open_names_the_file(tmp_path):
    paths = write_series(tmp_path, phantom_volume(3))
    series = DICOMSeries.open(tmp_path)
    paths[1].write_bytes(b"replaced by something else")
    with pytest.raises(DICOMError, match=r"1\.dcm: cannot decode PixelData"):
        series.read_hu([1])


def test_rle_compressed_series_decodes(tmp_path):
    volume = phantom_volume(4)
    write_series(tmp_path, volume, transfer_syntax=RLELossless)
    series = DICOMSeries.open(tmp_path)
    assert series.transfer_syntax == RLELossless
    np.testing.assert_array_equal(series.read_hu(), volume - 1024.0)


def test_decoder_support():
    assert dicom.decoder_support(RLELossless) == "available"
    assert dicom.decoder_support(ExplicitVRLittleEndian) == "available"
    assert dicom.decoder_support("1.2.3.4.5.6") == "unsupported"
    assert dicom.transfer_syntax_name(RLELossless) == "RLE Lossless (1.2.840.10008.1.2.5)"


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


# ----------------------------------------------------------------------------- numpy maths


def test_to_hu_and_window_maths():
    stored = np.array([0, 1024, 2048], dtype=np.int16)
    np.testing.assert_array_equal(to_hu(stored, 1.0, -1024.0), [-1024, 0, 1024])
    np.testing.assert_array_equal(to_hu(stored, 0.5, 10.0), [10, 522, 1034])
    hu = np.array([-2000, -1350, -600, 150, 1000], dtype=np.float32)
    windowed = window(hu, center=-600, width=1500)
    assert windowed.dtype == np.float32
    np.testing.assert_allclose(windowed, [0.0, 0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(window(np.array([-975.0]), -600, 1500), [0.25])
    np.testing.assert_array_equal(window_uint8(hu, -600, 1500), [0, 0, 128, 255, 255])
    assert window_uint8(hu, -600, 1500).dtype == np.uint8
    with pytest.raises(ValueError):
        window(hu, 0, 0)


def test_resize_block_mean_when_divisible():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(512, 512)).astype(np.float32)
    small = resize(image, 128)
    assert small.shape == (128, 128) and small.dtype == np.float32
    np.testing.assert_allclose(small[5, 7], image[20:24, 28:32].mean(), rtol=1e-5)
    stack = resize(np.stack([image, image + 1]), 128)
    assert stack.shape == (2, 128, 128)
    np.testing.assert_allclose(stack[1], small + 1, rtol=1e-4, atol=1e-5)


def test_resize_area_and_bilinear():
    rng = np.random.default_rng(1)
    image = rng.uniform(size=(30, 20)).astype(np.float32)
    down = resize(image, 16)  # rows shrink (area), columns grow (bilinear)
    assert down.shape == (16, 16)
    ramp = np.tile(np.arange(16, dtype=np.float32), (16, 1))
    up = resize(ramp, 32)
    assert up.shape == (32, 32)
    np.testing.assert_allclose(up[:, 1:-1], np.tile((np.arange(1, 31) + 0.5) / 2 - 0.5, (32, 1)), atol=1e-5)
    np.testing.assert_allclose(resize(np.full((7, 9), 3.0), 5), 3.0, rtol=1e-6)  # area weights sum to 1
    shrunk = resize(image[:, :15], 7)  # 30×15 → 7×7, both non-divisible
    assert abs(float(shrunk.mean()) - float(image[:, :15].mean())) < 1e-5  # area averaging keeps the mean
    np.testing.assert_array_equal(resize(image, 20).shape, (20, 20))
    with pytest.raises(ValueError):
        resize(np.zeros(5), 2)


# ----------------------------------------------------------------------------- fast header pass


def test_header_tag_numbers_match_the_dictionary():
    from pydicom.datadict import tag_for_keyword

    assert {keyword: tag_for_keyword(keyword) for keyword in dicom.HEADER_TAGS} == dicom.HEADER_TAGS


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
        fast = dicom.scan_header(handle, size, dicom.HEADER_TAGS.values())
        slow = dicom._pydicom_header(path, handle, size)
    assert fast is not None
    assert fast.values == slow.values
    assert len(fast.values) == 12  # every wanted tag but NumberOfFrames
    assert (fast.pixel_length, fast.pixel_bytes_left, fast.transfer_syntax) == (
        slow.pixel_length, slow.pixel_bytes_left, slow.transfer_syntax)
    quick = dicom.read_header(path)
    monkeypatch.setattr(dicom, "scan_header", lambda *args, **kwargs: None)
    assert dicom.read_header(path) == quick
    assert quick.position[2] == 2.5 and quick.instance_number == 7 and quick.slope == 2.0


def test_file_without_preamble_uses_the_pydicom_path(tmp_path):
    import pydicom

    path = write_ct_slice(tmp_path / "1.dcm", phantom_volume(1)[0], 1.0, 1, "1.2.3")
    ds = pydicom.dcmread(path)
    del ds.file_meta
    ds.preamble = None
    ds.save_as(path, enforce_file_format=False, implicit_vr=True, little_endian=True)
    with open(path, "rb") as handle:
        assert dicom.scan_header(handle, path.stat().st_size, dicom.HEADER_TAGS.values()) is None
    header = dicom.read_header(path)
    assert header.transfer_syntax == ImplicitVRLittleEndian and header.series_uid == "1.2.3"
    np.testing.assert_array_equal(DICOMSeries.open([path]).read_stored()[0], phantom_volume(1)[0])
