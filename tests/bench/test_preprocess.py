"""Preprocess benchmark: both pipelines run on the same phantom, and the report says where the time went."""

from __future__ import annotations

import re

import pytest

from medfake import cli


def test_bench_preprocess_reports_the_ratio_and_the_phases(tmp_path, capsys):
    report = tmp_path / "preprocess.md"
    code = cli.main(["bench", "preprocess", "--scans", "2", "--lidc-scans", "1", "--size", "32", "--slices", "32",
                     "--phantom", str(tmp_path / "phantom"), "--report", str(report)])
    assert code == 0
    text = report.read_text()
    files = int(re.search(r"\((\d+) DICOM files\)", text).group(1))
    rows = {name: (int(n), float(s)) for name, n, s in
            re.findall(r"^\| (decode every slice|medfake preprocess)[^|]* \| (\d+) \| ([0-9.]+) \|", text, re.M)}
    assert rows["decode every slice"][0] == files
    assert 0 < rows["medfake preprocess"][0] < files  # only the selected slices are decoded
    speedup = float(re.search(r"selective decoding: ([0-9.]+)×", text).group(1))
    assert speedup == pytest.approx(rows["decode every slice"][1] / rows["medfake preprocess"][1], rel=0.35)  # seconds rounded to 0.01
    phases = dict(re.findall(r"^\| (\w+): [^|]+ \| ([0-9.]+) \| \d+% \|", text, re.M))
    assert set(phases) == {"digest", "headers", "splits", "decode", "resize", "write"}
    assert sum(map(float, phases.values())) <= rows["medfake preprocess"][1] + 0.05
    assert float(re.search(r"Reading the built images\.npy once afterwards [^:]*: ([0-9.]+) s\.", text).group(1)) >= 0
    assert "Where medfake preprocess spent its time" in capsys.readouterr().out


def test_bench_preprocess_rejects_too_few_scans(tmp_path, capsys):
    assert cli.main(["bench", "preprocess", "--scans", "1", "--report", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--scans" in err[0]
    assert not (tmp_path / "r.md").exists()
