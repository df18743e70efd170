"""medfake.data.lidc: walking old and free-named trees, keeping CT only, split series."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from dicom_factory import phantom_volume, write_series
from pydicom.uid import generate_uid

from medfake.data import lidc
from medfake.core.errors import UserError


def test_old_layout_keeps_ct_and_reports_xray(tmp_path, caplog):
    patient_1 = tmp_path / "LIDC-IDRI" / "LIDC-IDRI-0001" / "1.3.6.1.4.1.9328.50.3.1"
    ct_uid, cr_uid, ct2_uid = generate_uid(), generate_uid(), generate_uid()
    write_series(patient_1 / "series-ct", phantom_volume(8), series_uid=ct_uid)
    write_series(patient_1 / "series-cr", phantom_volume(1), series_uid=cr_uid, modality="CR")
    (patient_1 / "series-ct" / "069.xml").write_text("<LidcReadMessage/>")  # reader annotations
    (patient_1 / "series-ct" / "VERSION").write_text("not dicom")
    write_series(tmp_path / "LIDC-IDRI" / "LIDC-IDRI-0002" / "study" / "series", phantom_volume(6), series_uid=ct2_uid)
    found = lidc.walk(tmp_path)
    assert [ref.series_uid for ref in found.series] == [ct_uid, ct2_uid]
    assert len(found.series[0]) == 8 and found.series[0].folder == patient_1 / "series-ct"
    assert ("LIDC-IDRI/LIDC-IDRI-0001/1.3.6.1.4.1.9328.50.3.1/series-cr", "CR series skipped (1 files): not CT") in found.skipped
    assert ("LIDC-IDRI/LIDC-IDRI-0001/1.3.6.1.4.1.9328.50.3.1/series-ct", "1 files are not DICOM") in found.skipped
    with caplog.at_level(logging.INFO, logger="medfake.data.lidc"):
        refs = lidc.find_series(tmp_path)
    assert [ref.series_uid for ref in refs] == [ct_uid, ct2_uid]
    assert "CR series skipped" in caplog.text
    assert "LIDC-IDRI-0001" not in caplog.text  # folder names are patient IDs: logged as hashes
    series = lidc.open_series(refs[1])
    assert len(series) == 6 and series.ordering == "position"
    np.testing.assert_array_equal(series.read_hu([5])[0], phantom_volume(6)[5] - 1024.0)


def test_free_named_tree_with_a_split_series(tmp_path):
    uid = generate_uid()
    volume = phantom_volume(10)
    names = [f"1-{i + 1:03d}.dcm" for i in range(10)]  # newer TCIA names: file numbers are not slice numbers
    write_series(tmp_path / "Patient A" / "part one", volume[:5], series_uid=uid, names=names[:5])
    write_series(tmp_path / "Patient A" / "part two", volume[5:], series_uid=uid, names=names[5:], z0=5 * 1.25)
    (tmp_path / "Patient A" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 7)
    refs = lidc.find_series(tmp_path)
    assert len(refs) == 1
    assert refs[0].folder == tmp_path / "Patient A"
    assert len(refs[0].files) == 10
    series = lidc.open_series(refs[0])
    assert len(series) == 10
    assert series.file_numbers == [None] * 10
    np.testing.assert_array_equal(series.read_hu([0, 9]), volume[[0, 9]] - 1024.0)


def test_unreadable_files_are_reported(tmp_path):
    write_series(tmp_path / "s", phantom_volume(3))
    (tmp_path / "s" / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff")
    found = lidc.walk(tmp_path)
    assert len(found.series) == 1
    assert any(where == "s" and "unreadable" in reason for where, reason in found.skipped), found.skipped


def test_missing_root_and_empty_tree(tmp_path):
    with pytest.raises(UserError, match="is not a folder"):
        lidc.find_series(tmp_path / "nope")
    assert lidc.find_series(tmp_path) == []
