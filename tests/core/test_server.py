"""The team tracking server for real: PostgreSQL (initdb/pg_ctl) + ``mlflow server``, no mocks.

Never skipped: a machine without PostgreSQL fails here with the install line (``.ci/run`` installs
Debian's ``postgresql`` first).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from medfake.core import server
from medfake.core.config import load_config
from medfake.core.contract import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, REGISTERED_MODEL, TAG_NOTE

from tiny_data import TINY, tiny_dataset


def _pids_alive(pids, wait_s: float = 15.0) -> list[int]:
    """Processes still running after ``wait_s`` (a zombie waiting for its reaper counts as gone)."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError):
                continue
            if state != "Z":
                alive.append(pid)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


@pytest.fixture(scope="session")
def team_server():
    """A private PostgreSQL and ``mlflow server`` on free loopback ports, torn down at the end.

    The folder sits under /tmp, not pytest's 0700 tmp tree: as root, the cluster runs as the
    ``postgres`` user, which must be able to reach it.
    """
    state = Path(tempfile.mkdtemp(prefix="medfake-server-test-"))
    state.chmod(0o755)
    log = state / "mlflow-server.log"
    try:
        with server.tracking_server(state, port=server.free_port(), log_file=log, workers=1) as running:
            postmaster = state / "postgres" / "postmaster.pid"
            pg_pid = int(postmaster.read_text().splitlines()[0])
            yield running, state
        assert running.process.poll() is not None, "mlflow server still running after teardown"
        assert not postmaster.exists() and not _pids_alive([pg_pid]), "PostgreSQL still running after teardown"
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_postgresql_uri_names_the_installed_driver():
    assert server.with_psycopg2("postgresql://u:p@h:5432/db") == "postgresql+psycopg2://u:p@h:5432/db"
    assert server.with_psycopg2("postgresql+psycopg2://u:p@h/db") == "postgresql+psycopg2://u:p@h/db"
    assert server.client_uri("127.0.0.1", 5000) == "http://127.0.0.1:5000"
    assert server.client_uri("0.0.0.0", 5000) != "http://0.0.0.0:5000"


def test_unreachable_existing_server_is_one_line(tmp_path):
    from medfake.cli import main

    port = server.free_port()
    code = main(["server", "--state-dir", str(tmp_path), "--port", str(server.free_port()),
                 "--backend-store-uri", f"postgresql://nobody:x@127.0.0.1:{port}/medfake"])
    assert code == 2


@pytest.mark.slow
def test_train_promote_scan_through_the_server(team_server, tmp_path, monkeypatch, capsys):
    import mlflow
    from mlflow.tracking import MlflowClient

    from medfake.cli import main
    from medfake.data.cache import cache_path
    from medfake.data.phantom import write_phantom

    running, state = team_server
    assert running.backend_store_uri.startswith("postgresql+psycopg2://")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", running.tracking_uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(running.tracking_uri)

    cfg = load_config("quickstart", TINY)
    dataset = tiny_dataset(cache_path(cfg, "5" * 16))
    sets = sum((["--set", s] for s in TINY), [])
    for model in ("baseline", "mobilenetv3large"):
        assert main(["train", "--model", model, "--data", dataset.digest, "--quiet", *sets]) == 0, model

    client = MlflowClient()
    experiment = client.get_experiment_by_name("medfake-test")
    assert experiment.tags.get(EXPERIMENT_KIND_TAG) == EXPERIMENT_KIND
    runs = client.search_runs([experiment.experiment_id])
    assert {r.info.run_name for r in runs} == {"baseline-s42", "MobileNetV3Large-s42"}
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
        assert {"predictions", "config.yaml"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    detector = next(r for r in runs if r.data.params["model"] == "MobileNetV3Large")
    assert "| auc |" in detector.data.tags[TAG_NOTE] and dataset.digest in detector.data.tags[TAG_NOTE]
    # the server stored the artifacts in its destination, not the client's working folder
    stored = state / "artifacts" / experiment.experiment_id / detector.info.run_id / "artifacts" / "predictions"
    assert (stored / "test.csv").is_file()

    # a detector trained for seconds on a few slices: this checks the chain through the server, not
    # its quality, so no chance floor (tests/registry/test_promote.py checks the floor)
    assert main(["promote", "--experiment", "medfake-test", "--model", "MobileNetV3Large", "--min-score", "none"]) == 0
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, "champion")
    assert champion.run_id == detector.info.run_id

    phantom = write_phantom(tmp_path / "phantom", scans=2, lidc_scans=1, size=64, slices=32, seed=5)
    report_file = tmp_path / "scan.json"
    capsys.readouterr()
    scratch = tmp_path / "scratch"  # the temporary folder: the champion's download goes once scored
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert main(["scan", str(phantom.lidc_root), "--json", str(report_file), "--quiet",
                 "--mlflow", "--experiment", "medfake-test-scan"]) == 0
    assert [p.name for p in scratch.iterdir() if not p.name.startswith("__autograph_generated_file")] == []
    report = json.loads(report_file.read_text())
    assert report["series"] and all(0 <= r["score"] <= 1 for s in report["series"] for r in s["scores"])
    scan_exp = client.get_experiment_by_name("medfake-test-scan")
    (scan_run,) = client.search_runs([scan_exp.experiment_id])
    assert scan_run.info.status == "FINISHED" and scan_run.info.artifact_uri.startswith("mlflow-artifacts:/")

    for local_store in ("mlruns", "mlartifacts", "mlflow.db"):
        assert not (work / local_store).exists(), f"{local_store} written next to the client"


PAPER_SETS = ("experiment=paper-team data.phantom.scans=6 data.phantom.lidc_scans=3 data.phantom.size=64 "
              "data.phantom.slices=32 data.image_size=32 data.split=random model.weights=none "
              "train.phase1_epochs=1 train.phase2_epochs=1 train.precision=float32 "
              "eval.bootstrap_samples=50 eval.latency_steps=2")
PAPER_METRICS = ("test_auc", "test_loss", "test_accuracy", "test_h", "val_loss", "test_auc_ci_low")


def _paper_metrics(capsys) -> dict[tuple[str, str], dict[str, float]]:
    """Run the tiny two-backbone paper with two parallel workers; its train runs' metrics by (stage, model)."""
    import mlflow

    from medfake.cli import main

    argv = ["paper", "--config", "quickstart", "--set", PAPER_SETS, "--models", "MobileNetV3Large,VGG19",
            "--repeats", "1", "--top-k", "1", "--parallel", "2", "--out", "report"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    runs = [run for stage in ("screen", "repeat") for run in mlflow.search_runs(
        experiment_names=["paper-team"], output_format="list", filter_string=f"tags.`medfake.stage` = '{stage}'")]
    assert all(run.info.status == "FINISHED" for run in runs)
    return {(run.data.tags["medfake.stage"], run.data.params["model"]): {k: run.data.metrics[k] for k in PAPER_METRICS}
            for run in runs}


@pytest.mark.slow
def test_tiny_paper_on_the_server_gives_the_sqlite_metrics(team_server, project, monkeypatch, capsys):
    """Issue 15: the same tiny `paper` (two backbones, `--parallel 2`) on SQLite and through the
    PostgreSQL-backed server: the same runs and the same metrics, the artifacts on the server."""
    import mlflow

    running, _ = team_server
    monkeypatch.setenv("PATH", f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    local = _paper_metrics(capsys)
    assert sorted(model for stage, model in local if stage == "screen") == ["MobileNetV3Large", "VGG19"]
    assert len(local) == 3  # two screens and the best one's repeat

    team = project / "team"
    team.mkdir()
    for name in ("MLproject", "conda.yaml"):
        shutil.copy(project / name, team / name)
    monkeypatch.chdir(team)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", running.tracking_uri)
    mlflow.set_tracking_uri(running.tracking_uri)
    remote = _paper_metrics(capsys)
    assert remote.keys() == local.keys()
    for key, metrics in local.items():
        assert remote[key] == pytest.approx(metrics, abs=1e-6), key
    runs = mlflow.search_runs(experiment_names=["paper-team"], output_format="list")
    assert runs and all(run.info.artifact_uri.startswith("mlflow-artifacts:/") for run in runs)
    assert (team / "report" / "README.md").is_file()
    for local_store in ("mlruns", "mlartifacts", "mlflow.db"):
        assert not (team / local_store).exists(), f"{local_store} written next to the client"
