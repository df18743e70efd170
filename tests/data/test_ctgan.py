"""medfake.data.ctgan: both folder layouts, label CSVs, and every bad-labels case."""

from __future__ import annotations

from pathlib import Path

import pytest
from dicom_factory import phantom_volume, write_series

from medfake.data import ctgan
from medfake.core.errors import UserError

NEW_LAYOUT = {"EXP1": "CT_Scans/EXP1_blind", "EXP2": "CT_Scans/EXP2_open"}
OLD_LAYOUT = {"EXP1": "Tampered Scans/Experiment 1 - Blind", "EXP2": "Tampered Scans/Experiment 2 - Open"}
LABELS_EXP1 = "type,uuid,slice,x,y\nFM,1280,3,5,6\nTB,42,0,1,2\nFB,0042,11,15,15\n"
LABELS_EXP2 = "type,uuid,slice,x,y\nTM,1280,2,7,8\n"


def make_root(root: Path, layout=NEW_LAYOUT, slices: int = 12, labels_in_root: bool = True) -> Path:
    """EXP1 holds scans 1280 and 0042, EXP2 holds 1280 again; plus non-scan entries."""
    for experiment, uuids in (("EXP1", ["1280", "0042"]), ("EXP2", ["1280"])):
        folder = root / layout[experiment]
        for uuid in uuids:
            write_series(folder / uuid, phantom_volume(slices))
        (folder / "README").mkdir()
        (folder / "desktop.ini").write_text("[x]")
    for experiment, text in (("EXP1", LABELS_EXP1), ("EXP2", LABELS_EXP2)):
        target = root if labels_in_root else root / layout[experiment]
        (target / f"labels_{experiment.lower()}.csv").write_text(text)
    return root


@pytest.fixture(scope="module")
def ctgan_root(tmp_path_factory):
    return make_root(tmp_path_factory.mktemp("ctgan"))


def test_find_scans_keys_by_experiment_and_uuid(ctgan_root):
    scans = ctgan.find_scans(ctgan_root)
    assert list(scans) == [("EXP1", "0042"), ("EXP1", "1280"), ("EXP2", "1280")]
    assert scans[("EXP2", "1280")] == ctgan_root / "CT_Scans/EXP2_open/1280"


def test_read_labels(ctgan_root):
    labels = ctgan.read_labels(ctgan_root)
    assert list(labels.columns[:8]) == ["experiment", "type", "uuid", "slice", "x", "y", "tampered", "csv_row"]
    assert labels["experiment"].tolist() == ["EXP1", "EXP1", "EXP1", "EXP2"]
    assert labels["uuid"].tolist() == ["1280", "0042", "0042", "1280"]  # 42 → the folder's spelling
    assert labels["slice"].tolist() == [3, 0, 11, 2]
    assert labels["x"].tolist() == [5, 1, 15, 7] and labels["y"].tolist() == [6, 2, 15, 8]
    assert labels["tampered"].tolist() == [True, False, True, False]
    assert labels["csv_row"].tolist() == [1, 2, 3, 1]
    assert str(labels["slice"].dtype) == "int64"
    assert Path(labels["csv_file"].iloc[3]).name == "labels_exp2.csv"
    assert ctgan.label_counts(labels) == {"TB": 1, "TM": 1, "FB": 1, "FM": 1, "total": 4}
    assert len(ctgan.tampered_labels(labels)) == 2


def test_original_layout_with_labels_in_experiment_folders(tmp_path):
    root = make_root(tmp_path, layout=OLD_LAYOUT, labels_in_root=False)
    scans = ctgan.find_scans(root)
    assert scans[("EXP1", "1280")] == root / "Tampered Scans/Experiment 1 - Blind/1280"
    labels = ctgan.read_labels(root)
    assert len(labels) == 4
    assert Path(labels["csv_file"].iloc[0]).parent.name == "Experiment 1 - Blind"
    series = ctgan.open_scan(root, "EXP2", "1280")
    assert len(series) == 12


def test_root_labels_win_over_experiment_folder_copy(tmp_path):
    root = make_root(tmp_path)
    (root / NEW_LAYOUT["EXP1"] / "labels_exp1.csv").write_text("garbage\n")
    assert len(ctgan.read_labels(root)) == 4


def test_open_scan_sorts_numerically_and_checks_order(ctgan_root):
    series = ctgan.open_scan(ctgan_root, 1, "1280")
    assert series.file_numbers == list(range(12))  # 10.dcm and 11.dcm last, not after 1.dcm
    assert ctgan.check_file_order(series) is None
    assert ctgan.slices_around(series, 3, 5) == list(range(0, 9))
    assert ctgan.slices_around(series, 11, 2) == [9, 10, 11]
    labels = ctgan.read_labels(ctgan_root)
    ctgan.validate_label_slices(labels, series, "EXP1", "1280")


def test_file_order_disagreeing_with_positions_is_a_warning(tmp_path):
    folder = tmp_path / "CT_Scans/EXP1_blind/0007"
    names = [f"{n}.dcm" for n in (0, 1, 2, 4, 3, 5, 6, 7)]
    write_series(folder, phantom_volume(8), names=names)
    series = ctgan.open_scan(tmp_path, "exp1", "0007")
    message = ctgan.check_file_order(series)
    assert message is not None and "file numbers do not follow the ImagePositionPatient order" in message
    assert "4.dcm is followed by 3.dcm" in message  # the first step against the main direction
    assert ctgan.scan_id("1", "0007") == "EXP1/0007"


def test_experiment_names():
    assert [ctgan.normalize_experiment(v) for v in (1, "2", "exp1", "EXP2_open", "Experiment 1 - Blind")] == [
        "EXP1", "EXP2", "EXP1", "EXP2", "EXP1",
    ]
    with pytest.raises(UserError, match="unknown CT-GAN experiment 'EXP3'"):
        ctgan.normalize_experiment("EXP3")


BAD_LABELS = [
    ("type,uuid,slice\nFM,1280,3\n", r"labels_exp1\.csv: missing columns x, y \(found type, uuid, slice"),
    ("type,uuid,slice,x,y\nFM,1280,3,5,6\nXX,1280,3,5,6\n", r"labels_exp1\.csv: row 2: unknown type 'XX'"),
    ("type,uuid,slice,x,y\nFM,1280,three,5,6\n", r"row 1: slice 'three' is not an integer"),
    ("type,uuid,slice,x,y\nFM,1280,3,5.5,6\n", r"row 1: x '5\.5' is not an integer"),
    ("type,uuid,slice,x,y\nFM,1280,3,5,\n", r"row 1: y '' is not an integer"),
    ("type,uuid,slice,x,y\nFM,1280,-1,5,6\n", r"row 1: slice -1 is negative"),
    ("type,uuid,slice,x,y\nFM,1280,3,5,6\nFM,9999,3,5,6\n", r"row 2: uuid '9999' has no scan folder in .*EXP1_blind"),
    ("type,uuid,slice,x,y\nFM,../1280,3,5,6\n", r"row 1: uuid '\.\./1280' is not a scan folder name"),
    ("type,uuid,slice,x,y\nFM,/etc,3,5,6\n", r"row 1: uuid '/etc' is not a scan folder name"),
    ("type,uuid,slice,x,y\nFM,..,3,5,6\n", r"row 1: uuid '\.\.' is not a scan folder name"),
    ("type,uuid,slice,x,y\nFM,12\\80,3,5,6\n", r"row 1: uuid '12\\\\80' is not a scan folder name"),
]


@pytest.mark.parametrize("text, message", BAD_LABELS)
def test_bad_labels_name_file_and_row(tmp_path, text, message):
    root = make_root(tmp_path, slices=3)
    (root / "labels_exp1.csv").write_text(text)
    with pytest.raises(UserError, match=message) as info:
        ctgan.read_labels(root)
    assert "\n" not in str(info.value)


def test_no_labels_csv_lists_where_it_looked(tmp_path):
    root = make_root(tmp_path, slices=2)
    (root / "labels_exp1.csv").unlink()
    (root / "labels_exp2.csv").unlink()
    with pytest.raises(UserError, match=r"no CT-GAN labels CSV found: looked for .*labels_exp1\.csv, .*EXP1_blind/labels_exp1\.csv"):
        ctgan.read_labels(root)


def test_no_scan_folders(tmp_path):
    with pytest.raises(UserError, match=r"no CT-GAN scan folders under .*: looked for CT_Scans/EXP1_blind"):
        ctgan.find_scans(tmp_path)
    with pytest.raises(UserError, match="is not a folder"):
        ctgan.find_scans(tmp_path / "missing")


def test_slice_out_of_range_is_checked_when_the_scan_is_opened(tmp_path):
    root = make_root(tmp_path, slices=12)
    (root / "labels_exp1.csv").write_text("type,uuid,slice,x,y\nFM,1280,3,5,6\nFB,1280,12,5,6\nTB,42,1,16,2\n")
    labels = ctgan.read_labels(root)  # reading stays header-free: no error yet
    series = ctgan.open_scan(root, "EXP1", "1280")
    with pytest.raises(UserError, match=r"labels_exp1\.csv: row 2: slice 12 is not a slice of scan EXP1/1280 \(file numbers 0–11\)"):
        ctgan.validate_label_slices(labels, series, "EXP1", "1280")
    other = ctgan.open_scan(root, "EXP1", "0042")
    with pytest.raises(UserError, match=r"row 3: x 16, y 2 is outside the 16×16 image of scan EXP1/0042"):
        ctgan.validate_label_slices(labels, other, "EXP1", "0042")


def test_open_scan_refuses_paths_and_missing_scans(ctgan_root):
    with pytest.raises(UserError, match="not a scan folder name"):
        ctgan.open_scan(ctgan_root, "EXP1", "../EXP2_open/1280")
    with pytest.raises(UserError, match=r"scan EXP2/0042: no folder"):
        ctgan.open_scan(ctgan_root, "EXP2", "0042")
