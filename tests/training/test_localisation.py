"""Localisation scores on hand-made maps: pointing game, disc energy, chance, FM/FB, rank correlation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medfake.core.contract import localisation_key
from medfake.io.transforms import resize
from medfake.training import localisation as loc


def _spot(size: int, x: int, y: int, value: float = 1.0) -> np.ndarray:
    image = np.zeros((size, size), np.float32)
    image[y, x] = value
    return image


def test_label_coordinates_map_like_the_resize():
    big = np.zeros((512, 512), np.float32)
    big[8:12, 20:24] = 1.0                       # one 4×4 block → one pixel of the 128² slice
    small = resize(big, 128)
    row, col = np.unravel_index(small.argmax(), small.shape)
    assert loc.to_input(21.5, 512, 128) == pytest.approx(col)
    assert loc.to_input(9.5, 512, 128) == pytest.approx(row)
    assert loc.to_input(255.5, 512, 96) == pytest.approx(47.5)   # centre stays the centre
    assert loc.default_radius(96) == pytest.approx(3.0)


def test_pointing_game_and_energy_on_hand_made_maps():
    size = 16
    maps = np.stack([_spot(size, 5, 6), _spot(size, 12, 2), np.zeros((size, size), np.float32)])
    xy = np.array([[4.0, 6.0], [5.0, 6.0], [5.0, 6.0]])
    radius = np.full(3, 1.5)
    assert loc.pointing_game(maps, xy, radius).tolist() == [True, False, False]  # an all-zero map is a miss
    np.testing.assert_allclose(loc.disc_energy(maps, xy, radius), [1.0, 0.0, 0.0])
    spread = np.ones((1, size, size))
    share = loc.disc_share(xy[:1], radius[:1], size)
    np.testing.assert_allclose(loc.disc_energy(spread, xy[:1], radius[:1]), share)  # a flat map scores chance
    assert share[0] == pytest.approx(9 / 256)      # the 3×3 pixels within 1.5 of an integer centre
    assert np.isnan(loc.peaks(maps)[2]).all()
    block = np.zeros((1, size, size))
    block[0, 4:8, 8:12] = 2.0                      # a constant patch (occlusion): its centre is the peak
    np.testing.assert_allclose(loc.peaks(block)[0], [9.5, 5.5])


def test_analytic_chance_is_about_the_disc_area():
    share = loc.disc_share(np.array([[32.0, 32.0]]), np.array([8.0]), 64)[0]
    assert share == pytest.approx(np.pi * 64 / 64**2, rel=0.05)
    corner = loc.disc_share(np.array([[0.0, 0.0]]), np.array([8.0]), 64)[0]
    assert share / 4 < corner < share / 2    # a disc centred on the corner pixel keeps a quarter and its axes


def test_spearman_ranks_with_ties():
    a = np.array([[0.0, 0.0], [1.0, 2.0]])
    assert loc.spearman(a, a * 3 + 1) == pytest.approx(1.0)
    assert loc.spearman(a, -a) == pytest.approx(-1.0)
    assert np.isnan(loc.spearman(a, np.zeros_like(a)))
    assert loc._ranks(np.array([0.0, 0.0, 5.0, 1.0])).tolist() == [1.5, 1.5, 4.0, 3.0]
    assert loc.randomisation_spearman(np.stack([a, a]), np.stack([a, np.zeros_like(a)])) == pytest.approx(1.0)


def _rows() -> pd.DataFrame:
    return pd.DataFrame({
        "label": [1, 1, 1, 1, 0, 0],
        "label_type": ["FM", "FB", "FM", "FM", "TB", "lidc_random"],
        "truly_tampered": ["1", "1", "0", "", "0", ""],
        "x": ["10", "20", "10", "", "", ""],
        "y": ["12", "4", "12", "", "", ""],
        "radius": ["2", "", "2", "", "", ""],
    })


def test_truth_from_the_manifest_scores_only_positioned_tampered_slices():
    truth = loc.truth_from_manifest(_rows(), size=32, data_size=64)
    assert truth.scored.tolist() == [True, True, False, False, False, False]
    np.testing.assert_allclose(truth.xy[0], [loc.to_input(10, 64, 32), loc.to_input(12, 64, 32)])
    assert truth.radius[0] == pytest.approx(1.0)                   # 2 px of the stored slice, halved
    assert truth.radius[1] == pytest.approx(loc.default_radius(32))
    old = loc.truth_from_manifest(_rows().drop(columns=["x", "y", "radius"]), size=32)
    assert not old.scored.any()                                    # a manifest without positions scores nothing


def test_metrics_count_unpositioned_fakes_and_split_fm_fb():
    rows = _rows()
    truth = loc.truth_from_manifest(rows, size=32)
    maps = np.zeros((len(rows), 32, 32), np.float32)
    maps[0, 12, 10] = 1.0      # on the FM spot
    maps[1, 30, 30] = 1.0      # far from the FB spot
    metrics = loc.localisation_metrics("test", "cam", maps, truth, seed=0)
    assert metrics[localisation_key("test", "cam", "hit_rate")] == 0.5
    assert metrics[localisation_key("test", "cam", "hit_rate_fm")] == 1.0
    assert metrics[localisation_key("test", "cam", "hit_rate_fb")] == 0.0
    assert metrics[localisation_key("test", "cam", "energy")] == 0.5
    assert metrics["test_localisation_scored"] == 2.0
    assert metrics["test_localisation_unpositioned"] == 2.0      # TB/LIDC are neither scored nor counted
    assert 0 < metrics[localisation_key("test", "cam", "hit_rate_chance")] < 0.1


def test_no_positions_give_counts_only():
    rows = _rows().assign(x="", y="")
    metrics = loc.localisation_metrics("val", "occlusion", np.zeros((6, 8, 8)), loc.truth_from_manifest(rows, 8))
    assert set(metrics) == {"val_localisation_scored", "val_localisation_unpositioned"}
    assert metrics["val_localisation_unpositioned"] == 4.0


def test_shuffled_chance_is_lower_than_maps_that_point_at_the_truth():
    rng = np.random.default_rng(0)
    n, size = 40, 32
    xy = rng.integers(2, size - 2, (n, 2)).astype(float)
    maps = np.stack([_spot(size, int(x), int(y)) for x, y in xy])
    truth = loc.Truth(xy, np.full(n, 2.0), np.array(["FM"] * n), np.ones(n, bool))
    hit, energy = loc.shuffled_chance(maps, truth, seed=1)
    assert hit < 0.3 and energy < 0.3
    metrics = loc.localisation_metrics("test", "cam", maps, truth)
    assert metrics["test_cam_hit_rate"] == 1.0 and metrics["test_cam_energy"] == 1.0


def test_localisation_key_refuses_unknown_names():
    assert localisation_key("test", "occlusion", "energy") == "test_occlusion_energy"
    with pytest.raises(ValueError):
        localisation_key("test", "lime", "energy")


@pytest.mark.slow
def test_the_train_hook_logs_the_test_split_metrics(tracking_store, tmp_path):
    import mlflow
    from tiny_data import tiny_dataset

    from medfake.core.config import load_config
    from medfake.models.detector import build_detector

    dataset = tiny_dataset(tmp_path / "data" / "tiny", n=32, size=32, phantom_like=True)
    fake = (dataset.manifest["label"] == 1) & (dataset.manifest["truly_tampered"] == "1")
    dataset.manifest["x"] = np.where(fake, "11.50", "")   # the tiny fakes' bright square, rows/columns 8..15
    dataset.manifest["y"] = np.where(fake, "11.50", "")
    dataset.manifest["radius"] = np.where(fake, "4.00", "")
    cfg = load_config("quickstart", ["data.image_size=32", "train.batch_size=8"])
    assert cfg.eval.explain and not load_config("base").eval.explain
    detector = build_detector("VGG19", 32, weights=None, head_units=(8, 4))
    with mlflow.start_run() as run:
        metrics = loc.log_localisation(detector, dataset, cfg, "test")
    logged = mlflow.get_run(run.info.run_id).data.metrics
    test = dataset.manifest[dataset.manifest["split"] == "test"]
    scored = int(((test["label"] == 1) & (test["truly_tampered"] == "1")).sum())
    assert logged["test_localisation_scored"] == scored > 0
    for method in ("cam", "occlusion"):
        assert 0.0 <= logged[f"test_{method}_hit_rate"] <= 1.0
        assert logged[f"test_{method}_hit_rate_chance"] == pytest.approx(metrics[f"test_{method}_hit_rate_chance"])
