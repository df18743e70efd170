"""A train run leaves nothing behind in the temporary folder (one stray folder per run before)."""

from __future__ import annotations

import tempfile

from tiny_data import TINY, tiny_dataset

from medfake.core.config import load_config
from medfake.data.preprocess import cache_path


def test_train_run_leaves_no_stray_temporary_folder(tmp_path, tracking_store, monkeypatch):
    import mlflow

    from medfake.training.train import resolve_plan, train

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    cfg = load_config("quickstart", TINY)
    dataset = tiny_dataset(cache_path(cfg, "c" * 16))
    run_id = train(resolve_plan("baseline", cfg, "screen"), data_digest=dataset.digest, progress=False)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    assert artifacts, "the run logged its artifacts through the temporary folder"
    assert [p.name for p in scratch.iterdir()] == []
