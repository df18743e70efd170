"""The ``synth`` step's command line: summary, reuse, and one-line errors with exit code 2."""

from __future__ import annotations

import pytest

from medfake.cli import main


def test_synth_cli_writes_summary(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["synth", "--out", str(out), "--scans", "2", "--lidc-scans", "1", "--size", "32", "--slices", "32"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "CT-GAN-style scans" in printed and str(out / "truth") in printed
    assert "PHANTOM^" not in printed and "Phantom General Hospital" not in printed
    assert main(argv) == 0
    assert "nothing regenerated" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--size", "16"), ("--scans", "1"), ("--slices", "8"), ("--lidc-scans", "-1"), ("--seed", "-3")],
)
def test_synth_cli_bad_arguments_exit_2(tmp_path, capsys, flag, value):
    assert main(["synth", "--out", str(tmp_path / "x"), flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medfake synth: error:") and flag in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_synth_cli_bad_layout_exit_2(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--out", str(tmp_path / "x"), "--layout", "weird"])
    assert exc.value.code == 2
