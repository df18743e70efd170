"""Scan-level metrics: whole series of the split's scans, scan's own verdict rule, z-IoU with the truth."""

from __future__ import annotations

import numpy as np
import pytest

from medfake.core.config import load_config
from medfake.training import scan_level
from medfake.training.scan_level import ScoredScan

PHANTOM = dict(scans=6, lidc_scans=2, size=32, slices=32, seed=5)


def test_scan_metrics_by_hand():
    clean = np.full(10, 0.1)
    one_spike = clean.copy()
    one_spike[4] = 0.9                         # a single slice over: not enough for scan's rule
    found = clean.copy()
    found[3:6] = 0.8                           # slices 13-15 flagged; true extent 14-17
    missed = clean.copy()
    missed[7] = 0.7
    slices = list(range(10, 20))
    scans = [
        ScoredScan("a", True, found, slices, [(14, 17)]),
        ScoredScan("b", True, missed, slices, [(11, 12)]),
        ScoredScan("c", False, one_spike, slices, []),
        ScoredScan("d", False, clean, slices, []),
    ]
    keys = scan_level.scan_metrics("test", scans, threshold=0.5, min_slices=2)
    assert keys["test_scan_detection_rate"] == 0.5 and keys["test_scan_false_alarm_rate"] == 0.0
    assert keys["test_scan_auc"] == pytest.approx(0.5)  # max scores 0.8, 0.7 each above 0.1, below 0.9
    assert keys["test_scan_z_iou"] == pytest.approx((2 / 5 + 0.0) / 2)
    real = [ScoredScan(s.scan_id, s.tampered, s.scores, s.slices, None) for s in scans]
    assert "test_scan_z_iou" not in scan_level.scan_metrics("test", real)
    only_clean = scan_level.scan_metrics("test", scans[2:])
    assert set(only_clean) == {"test_scan_false_alarm_rate"}  # undefined rates are absent, not 0


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory):
    import os

    from medfake.data.phantom import write_phantom
    from medfake.data.preprocess import build

    folder = tmp_path_factory.mktemp("scanlevel")
    write_phantom(folder / "phantom", **PHANTOM)
    cfg = load_config("quickstart", [
        f"data.phantom.root={folder / 'phantom'}", f"data.cache_dir={folder / 'cache'}", "data.image_size=32",
        *(f"data.phantom.{k}={v}" for k, v in PHANTOM.items()),
    ])
    cwd = os.getcwd()
    os.chdir(folder)  # the de-identification salt file, if any, stays in the test's folder
    try:
        dataset, _, _ = build(cfg, progress=False)
    finally:
        os.chdir(cwd)
    return cfg, dataset


def test_every_slice_of_every_scan_is_scored(phantom_dataset):
    cfg, dataset = phantom_dataset
    m = dataset.manifest
    ids = set(m["scan_id"])
    sources = scan_level.locate_scans(cfg, ids)
    assert {s.scan_id for s in sources} == ids
    assert any(s.tampered for s in sources) and any(not s.tampered for s in sources)
    assert all(s.true_extents is not None for s in sources)
    selected = m.groupby("scan_id").size()
    for source in sources[:2]:
        series = source.open()
        scores, slices = scan_level.score_series(series, lambda x: np.full(len(x), 0.25), 32, 7)
        assert len(scores) == len(slices) == len(series) > selected[source.scan_id]
        assert sorted(slices) == sorted(series.file_numbers)  # CT-GAN file numbers, what labels call `slice`


def test_evaluate_scans_uses_scans_rule_on_the_test_split(phantom_dataset):
    cfg, dataset = phantom_dataset
    keys = scan_level.evaluate_scans(cfg, dataset, "test", lambda x: np.full(len(x), 0.9), batch_size=16)
    assert keys, "the phantom's test split is grouped by scan"
    # Every slice over the threshold: every scan is suspicious.
    assert keys.get("test_scan_detection_rate", 1.0) == 1.0 and keys.get("test_scan_false_alarm_rate", 1.0) == 1.0
    if "test_scan_z_iou" in keys:  # the true extents are a part of the whole series
        assert 0.0 < keys["test_scan_z_iou"] < 1.0
    random_split = type(dataset)(dataset.path, dataset.digest, dataset.manifest, {**dataset.info, "split": "random"})
    assert scan_level.evaluate_scans(cfg, random_split, "test", lambda x: np.full(len(x), 0.9), 16) == {}
