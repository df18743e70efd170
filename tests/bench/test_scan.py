"""Scan benchmark: both paths run on the same files, agree slice by slice, and the report says so."""

from __future__ import annotations

import re

import pytest

from medfake import cli


def test_bench_scan_times_both_paths_and_their_scores_agree(tmp_path, capsys):
    report = tmp_path / "scan.md"
    code = cli.main(["bench", "scan", "--slices", "32", "--size", "48", "--runtime", "keras", "--batch-size", "8",
                     "--phantom", str(tmp_path / "phantom"), "--report", str(report)])
    assert code == 0
    text = report.read_text()
    slices = int(re.search(r"\*\*synthetic CT phantom\*\* series \(not a real scan\): (\d+) slices of 48²", text).group(1))
    assert slices >= 32
    assert "runtime chosen by scan: **keras-float32**" in text
    rows = dict(re.findall(r"^\| (naive|medfake scan)[^|]* \| ([0-9.]+) \|", text, re.M))
    assert set(rows) == {"naive", "medfake scan"}
    ratio = float(re.search(r"This run: ([0-9.]+)× the naive loop", text).group(1))
    # the table rounds seconds to 0.01: the ratio printed from unrounded times agrees within that
    assert ratio == pytest.approx(float(rows["naive"]) / float(rows["medfake scan"]), rel=0.1)
    # same detector, same files, float32 on both paths: the scores must match
    delta = float(re.search(rf"max \|Δp\| between the two paths over all {slices} slices = ([0-9.e+-]+)", text).group(1))
    assert delta <= 1e-4
    assert f"{slices} slices" in capsys.readouterr().out


def test_bench_scan_rejects_a_too_small_series(tmp_path, capsys):
    assert cli.main(["bench", "scan", "--slices", "8", "--report", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--slices" in err[0]
    assert not (tmp_path / "r.md").exists()
