"""`medfake inspect`: summary of a series or file, one-line errors, no patient data."""

from __future__ import annotations

import json

import numpy as np
from dicom_factory import phantom_volume, write_series

from medfake.cli import main


def test_inspect_folder_prints_the_summary(tmp_path, capsys):
    volume = phantom_volume(9)
    write_series(tmp_path, volume, names=[f"{n}.dcm" for n in (1, 0, 2, 3, 4, 5, 6, 7, 8)])
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "modality         CT" in out
    assert "slices           9" in out
    assert "size             16 × 16" in out
    assert "pixel spacing    0.7 × 0.7 mm" in out
    assert "slice spacing    1.25 mm (min 1.25, max 1.25)" in out
    sampled = volume[[0, 4, 8]].astype(float) - 1024
    assert f"HU range         {sampled.min():g} … {sampled.max():g} (slices 0, 4, 8 sampled)" in out
    assert "ordering         position" in out
    assert "file numbers DO NOT follow the position order" in out
    assert "skipped files    none" in out


def test_inspect_json_single_file_and_skipped(tmp_path, capsys):
    paths = write_series(tmp_path, phantom_volume(5), slope=None, intercept=None)
    (tmp_path / "readme.txt").write_text("not an image")
    assert main(["inspect", "--json", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["slices"] == 5
    assert summary["file_order"] == "ascending" and summary["file_order_agrees"] is True
    assert summary["skipped"] == [{"file": "readme.txt", "reason": "not a DICOM file"}]
    assert summary["hu_range"]["min"] == float(np.min(phantom_volume(5)[[0, 2, 4]]))
    assert main(["inspect", "--json", str(paths[2])]) == 0
    single = json.loads(capsys.readouterr().out)
    assert single["slices"] == 1 and single["slice_spacing_mm"]["median"] is None


def test_inspect_failure_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("hello")
    assert main(["inspect", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("medfake inspect: error: ")
    assert "no readable DICOM image" in lines[0]
    assert "Traceback" not in captured.err
    assert main(["inspect", str(tmp_path / "nowhere")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_inspect_refuses_xray(tmp_path, capsys):
    write_series(tmp_path, phantom_volume(2), modality="CR")
    assert main(["inspect", str(tmp_path)]) == 2
    assert "Modality is CR, not CT" in capsys.readouterr().err


def test_inspect_never_prints_patient_data(tmp_path, capsys):
    name = "DOE^JANE"
    write_series(tmp_path, phantom_volume(4), patient_name=name, positions=[0, 1, 2, 5])
    (tmp_path / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM")
    for argv in (["inspect", str(tmp_path)], ["inspect", "--json", str(tmp_path)]):
        assert main(argv) == 0
        captured = capsys.readouterr()
        text = captured.out + captured.err
        assert "gap of" in text  # the report did run and list problems
        for secret in ("DOE", "JANE", "19700101", "Test Hospital", "PID-"):
            assert secret not in text
