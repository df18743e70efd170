"""The layered layout holds: a folder imports only from the folders below it, and `medfake --help`
stays light (no TensorFlow, Keras or MLflow imported to print it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]
LAYERS = ["cli", "bench", "study", "registry", "inference", "training", "models", "data", "io", "core"]


def test_import_linter_layers_contract_is_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=CHECKOUT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "pipeline layers KEPT" in result.stdout


def test_the_contract_names_the_layers_in_pipeline_order():
    import tomllib

    config = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    assert contract["layers"] == [f"medfake.{name}" for name in LAYERS]
    package = CHECKOUT / "medfake"
    folders = {p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()} - {"experiments"}
    assert folders == set(LAYERS) - {"cli"}, "every package folder is a layer of the contract"
    assert not [p.name for p in package.glob("*.py") if p.name not in ("__init__.py", "cli.py")]


def test_a_back_arrow_breaks_the_contract(tmp_path):
    """The check can fail: a copy of the package where core imports a step is refused."""
    import shutil

    shutil.copytree(CHECKOUT / "medfake", tmp_path / "medfake", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(CHECKOUT / "pyproject.toml", tmp_path / "pyproject.toml")
    errors = tmp_path / "medfake" / "core" / "errors.py"
    errors.write_text(errors.read_text() + "\n\ndef _back_arrow():\n    from medfake.training import metrics  # noqa: F401\n")
    lint = Path(sys.executable).with_name("lint-imports")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "medfake.core.errors -> medfake.training.metrics" in result.stdout


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["scan", "--help"]])
def test_help_imports_no_heavy_library(argv):
    code = ("import sys; from medfake import cli\n"
            f"try:\n    cli.main({argv!r})\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('tensorflow', 'keras', 'mlflow', 'openvino', 'onnxruntime', 'optuna') "
            "if m in sys.modules)\nprint('HEAVY', heavy)")
    result = subprocess.run([sys.executable, "-c", code], cwd=CHECKOUT, capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
