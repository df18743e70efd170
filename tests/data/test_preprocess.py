"""The preprocess step on a tiny phantom: selection, splits, cache reuse, atomicity, privacy."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from medfake.core.config import load_config

TINY_DATA = [
    "data.phantom.scans=8", "data.phantom.lidc_scans=4", "data.phantom.size=64", "data.phantom.slices=32",
    "data.image_size=32", "experiment=medfake-test-build",
]


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    from medfake.data.phantom import write_phantom

    root = tmp_path_factory.mktemp("phantom") / "phantom"
    write_phantom(root, scans=8, lidc_scans=4, size=64, slices=32, seed=7)
    return root


def config(phantom_root, *extra):
    return load_config("quickstart", [*TINY_DATA, f"data.phantom.root={phantom_root}", *extra])


def test_matched_by_scan_is_balanced_and_leak_free(phantom_root, tracking_store):
    from medfake.data.preprocess import preprocess

    dataset, run_id = preprocess(config(phantom_root), progress=False)
    m = dataset.manifest
    assert (m["label"] == 1).sum() == (m["label"] == 0).sum()
    assert set(m.loc[m["label"] == 1, "label_type"]) <= {"FB", "FM"}
    assert set(m.loc[(m["label"] == 0) & (m["source"] == "ctgan"), "label_type"]) <= {"TB", "TM"}
    splits_per_scan = m.groupby("scan_id")["split"].nunique()
    assert (splits_per_scan == 1).all(), "by_scan must keep every scan in one split"
    assert set(m["split"]) == {"train", "val", "test"}
    images = dataset.images
    assert images.dtype == np.int16 and images.shape == (len(m), 32, 32)
    assert -1100 < float(np.median(images)) < 500  # HU, not raw stored values
    # Phantom truth: the ±radius rule's label noise is measured.
    assert set(m.loc[(m["label"] == 1), "truly_tampered"]) == {"0", "1"}
    import mlflow

    run = mlflow.get_run(run_id)
    assert run.data.tags["medfake.stage"] == "preprocess"
    assert run.data.tags["medfake.data_digest"] == dataset.digest
    assert 0 < run.data.metrics["label_noise_rate"] < 0.5
    assert run.data.metrics["count_test_fake"] + run.data.metrics["count_test_real"] > 0
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    assert {"manifest.csv", "config.yaml", "plots"} <= artifacts


def test_paper_protocol_uses_random_lidc_negatives_and_stratified_split(phantom_root, tracking_store):
    from medfake.data.preprocess import preprocess

    dataset, _ = preprocess(config(phantom_root, "data.negatives=lidc_random", "data.split=random"), progress=False)
    m = dataset.manifest
    assert set(m.loc[m["label"] == 0, "source"]) == {"lidc"}
    for split in ("train", "val", "test"):
        part = m[m["split"] == split]
        assert abs(part["label"].mean() - 0.5) < 0.15  # stratified
    assert abs((m["split"] == "test").mean() - 0.15) < 0.05


def test_same_inputs_reuse_the_cache_and_the_run(phantom_root, tracking_store, capsys):
    from medfake.data.preprocess import preprocess

    cfg = config(phantom_root)
    first, run_a = preprocess(cfg, progress=False)
    second, run_b = preprocess(cfg, progress=False)
    assert (first.digest, run_a) == (second.digest, run_b)
    assert "reusing dataset" in capsys.readouterr().err
    other, _ = preprocess(config(phantom_root, "data.slice_radius=3"), progress=False)
    assert other.digest != first.digest


def test_interrupted_build_leaves_no_cache_and_a_failed_run(phantom_root, tracking_store, monkeypatch):
    import mlflow

    from medfake.data import images
    from medfake.data.preprocess import cache_path, dataset_digest, preprocess, resolve_inputs

    cfg = config(phantom_root, "data.seed=5")
    calls = {"n": 0}
    real_resize = images.resize  # 64² phantom slices stored at 32²: every slice is resized

    def resize_then_fail(image, size):
        calls["n"] += 1
        if calls["n"] > 10:
            raise OSError("disk full")
        return real_resize(image, size)

    monkeypatch.setattr(images, "resize", resize_then_fail)
    with pytest.raises(OSError):
        preprocess(cfg, progress=False)
    digest = dataset_digest(cfg, resolve_inputs(cfg, progress=False))
    final = cache_path(cfg, digest)
    assert not final.exists()
    assert not list(final.parent.glob(f".{digest}.tmp-*"))
    run = mlflow.search_runs(experiment_names=["medfake-test-build"], output_format="list")[0]
    assert run.info.status == "FAILED" and "disk full" in run.data.tags["medfake.failure"]


def test_labels_naming_a_missing_scan_is_one_line_exit_2(phantom_root, tmp_path, tracking_store, capsys):
    from medfake.cli import main

    broken = tmp_path / "broken"
    shutil.copytree(phantom_root, broken)
    labels = broken / "ctgan" / "labels_exp1.csv"
    lines = labels.read_text().splitlines()
    lines.append("FM,9999,10,20,20")
    labels.write_text("\n".join(lines) + "\n")
    args = ["preprocess", "--quiet", "--set", " ".join(TINY_DATA), "--set", f"data.phantom.root={broken}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "9999" in err[0] and "Traceback" not in err[0]
    assert not list((tmp_path / ".medfake" / "datasets").glob("*/dataset.json"))


def test_no_patient_data_reaches_anything_written(phantom_root, tracking_store, capsys):
    from medfake.cli import main

    assert main(["preprocess", "--quiet", "--set", " ".join(TINY_DATA), "--set", f"data.phantom.root={phantom_root}"]) == 0
    out = capsys.readouterr()
    written = [p for p in Path(".").rglob("*") if p.is_file()]  # cache, manifest, mlflow.db, artifacts
    assert any(p.name == "manifest.csv" for p in written) and any(p.name == "mlflow.db" for p in written)
    for needle in (b"PHANTOM^", b"PHANTOM-", b"Phantom General Hospital"):
        assert needle.decode() not in out.out + out.err
        for path in written:
            assert needle not in path.read_bytes(), f"{needle!r} in {path}"
            assert needle.decode() not in str(path)
