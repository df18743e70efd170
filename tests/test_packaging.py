"""A plain (non-editable) `pip install .` works from any folder: the experiment configs ship in the
wheel, and a user's ./experiments/ file overrides the shipped one."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding medfake installed from a built wheel (not editable). Its third-party
    dependencies come from the test's own environment through a .pth line, so nothing is downloaded."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # a copy, so the build leaves no build/ folder in the checkout
    source.mkdir()
    shutil.copytree(CHECKOUT / "medfake", source / "medfake", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(CHECKOUT / name, source / name)
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(source)], check=True, timeout=600, capture_output=True)
    (wheel,) = wheels.glob("medfake-*.whl")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    purelib = Path(subprocess.run([str(env_dir / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    ours = sysconfig.get_paths()["purelib"]
    # Dependencies only: the checkout's editable medfake must not be visible in the new venv.
    (purelib / "deps.pth").write_text(ours + "\n")
    for entry in Path(ours).glob("__editable__*medfake*"):
        assert entry.exists()
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(purelib),
                    str(wheel)], check=True, timeout=600, capture_output=True)
    bin_dir = env_dir / "bin"
    (bin_dir / "medfake").write_text(f"#!{bin_dir / 'python'}\nimport sys\nfrom medfake.cli import main\nsys.exit(main())\n")
    (bin_dir / "medfake").chmod(0o755)
    return env_dir


def _run(env_dir: Path, cwd: Path, *argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    env["PATH"] = f"{env_dir / 'bin'}:{env['PATH']}"
    return subprocess.run([str(env_dir / "bin" / "medfake"), *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_wheel_is_the_one_imported(installed, tmp_path):
    code = "import medfake, medfake.core.config as c; print(medfake.__file__); print(c.EXPERIMENTS_DIR)"
    out = subprocess.run([str(installed / "bin" / "python"), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout.split()
    assert str(installed) in out[0] and str(CHECKOUT) not in out[0]
    assert (Path(out[1]) / "quickstart.yaml").is_file() and (Path(out[1]) / "base.yaml").is_file()
    assert site  # the dependencies come from this environment (see the fixture)


@pytest.mark.slow
def test_train_baseline_from_an_empty_folder(installed, tmp_path):
    result = _run(installed, tmp_path, "train", "--model", "baseline", "--config", "quickstart")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "test" in result.stdout and (tmp_path / "mlflow.db").is_file()


def test_a_users_experiment_file_overrides_the_shipped_one(installed, tmp_path):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "quickstart.yaml").write_text("experiment: my-own-quickstart\n")
    code = "from medfake.core.config import load_config; print(load_config('quickstart').experiment)"
    out = subprocess.run([str(installed / "bin" / "python"), "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "my-own-quickstart"
    result = _run(installed, tmp_path, "train", "--model", "baseline", "--config", "no-such-config")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "no-such-config" in result.stderr and "quickstart" in result.stderr
