"""medfake.data.build: the by_experiment dataset on a tiny phantom (train/val EXP1, test EXP2)."""

from __future__ import annotations

import pytest

from medfake.core.config import load_config
from medfake.data.build import build
from medfake.data.phantom import write_phantom

TINY = ["data.phantom.scans=8", "data.phantom.lidc_scans=4", "data.phantom.size=64", "data.phantom.slices=32",
        "data.image_size=32", "data.split=by_experiment"]


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom") / "phantom"
    write_phantom(root, scans=8, lidc_scans=4, size=64, slices=32, seed=7)
    return root


@pytest.mark.parametrize("negatives", ["matched", "lidc_random"])
def test_by_experiment_trains_on_exp1_and_tests_on_exp2(phantom_root, tmp_path, monkeypatch, negatives):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("exp1-to-exp2", [*TINY, f"data.phantom.root={phantom_root}", f"data.negatives={negatives}"])
    dataset, reused, _ = build(cfg, progress=False)
    assert not reused
    m = dataset.manifest
    ctgan = m[m["source"] == "ctgan"]
    from_exp2 = ctgan["provenance"].str.startswith("labels_exp2.csv")
    assert from_exp2.any() and (~from_exp2).any()
    assert set(ctgan.loc[from_exp2, "split"]) == {"test"}  # no EXP2 scan in train/val
    assert set(ctgan.loc[~from_exp2, "split"]) == {"train", "val"}  # no EXP1 scan in test
    assert not set(m.loc[m["split"] == "test", "scan_id"]) & set(m.loc[m["split"] != "test", "scan_id"])
    shared = [line for line in (dataset.path / "problems.txt").read_text().splitlines() if "both experiments" in line]
    assert len(shared) == 1  # the phantom's patient scanned in both experiments left training ...
    named = shared[0].split("(scan ", 1)[1].split(")", 1)[0]
    assert named in set(m.loc[m["split"] == "test", "scan_id"])  # ... named by its salted scan id, tested only
    for split in ("train", "val", "test"):
        part = m[m["split"] == split]
        assert set(part["label"]) == {0, 1}, split
    if negatives == "lidc_random":
        assert set(m.loc[m["label"] == 0, "split"]) == {"train", "val", "test"}
