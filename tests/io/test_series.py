"""medfake.io.series: ordering, problems found while assembling a series, HU of chosen slices."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import ImplicitVRLittleEndian, RLELossless, generate_uid

from medfake.core.errors import DICOMError, UserError
from medfake.io import series as series_module
from medfake.io.series import DICOMSeries
from medfake.io.transforms import project_positions, slice_normal
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
    real_decode, real_native = series_module.decode_stored, series_module.read_native
    monkeypatch.setattr(series_module, "decode_stored", lambda path, ts="": decoded.append(path.name) or real_decode(path, ts))
    monkeypatch.setattr(series_module, "read_native",
                        lambda path, *args, **kwargs: decoded.append(path.name) or real_native(path, *args, **kwargs))
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


@pytest.mark.parametrize("syntax", [None, RLELossless])  # read natively, and decoded by pydicom
def test_read_hu_int16_is_read_hu_rounded(tmp_path, syntax):
    volume = phantom_volume(5)
    volume[1, 0, :4] = [-32768, 32767, -1, 0]  # clipped once the intercept is added
    write_series(tmp_path, volume, **({"transfer_syntax": syntax} if syntax else {}))
    series = DICOMSeries.open(tmp_path)
    out = np.empty((3, 16, 16), dtype=np.int16)
    assert series.read_hu_int16([4, 1, 0], out=out) is out
    expected = np.clip(np.rint(series.read_hu([4, 1, 0])), -32768, 32767).astype(np.int16)
    assert out.tobytes() == expected.tobytes()
    with pytest.raises(ValueError):
        series.read_hu_int16([0], out=np.empty((1, 16, 16), dtype=np.float32))
