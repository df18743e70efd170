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


def test_occlusion_patch_is_the_tampers_median_diameter_within_s_over_8_and_s():
    assert loc.occlusion_patch(np.array([4.0, 6.0, 8.0, np.nan]), 64) == 12    # median r 6 → 12 pixels
    assert loc.occlusion_patch(np.array([3.3]), 16) == 7                       # 6.6 rounds to 7, not down
    assert loc.occlusion_patch(np.array([3.2, np.nan]), 16) == 6
    assert loc.occlusion_patch(np.array([1.0]), 64) == 8                       # at least S/8: ≤ 64 passes
    assert loc.occlusion_patch(np.array([np.nan]), 64) == 8                    # no radius known
    assert loc.occlusion_patch(np.array([0.4]), 8) == 2                        # never below 2 pixels
    assert loc.occlusion_patch(np.array([100.0]), 64) == 64                    # never above the slice


def test_sample_keeps_every_slice_up_to_the_limit_and_a_seeded_sorted_draw_beyond():
    assert loc._sample(5, None, 0).tolist() == [0, 1, 2, 3, 4]
    assert loc._sample(5, 5, 0).tolist() == [0, 1, 2, 3, 4]
    drawn = loc._sample(50, 6, 3)
    expected = np.sort(np.random.default_rng(3).choice(50, 6, replace=False))
    assert drawn.tolist() == expected.tolist() and len(set(drawn.tolist())) == 6
    assert loc._sample(50, 6, 3).tolist() == drawn.tolist()
    assert loc._sample(50, 6, 4).tolist() != drawn.tolist()
    assert loc._sample(6, 5, 0).tolist() == np.sort(np.random.default_rng(0).choice(6, 5, replace=False)).tolist()


def test_truth_reads_radius_labels_and_types_from_the_manifest_as_written():
    rows = pd.DataFrame({"label": ["1", "0", "1"], "label_type": ["TB", "FM", "FB"], "x": ["3", "3", "n/a"],
                         "y": ["4", "4", "5"], "radius": ["6", "2", ""]})
    truth = loc.truth_from_manifest(rows, size=32, data_size=64)
    assert truth.fake.tolist() == [True, False, True]        # the label decides, read from text too
    assert truth.scored.tolist() == [True, False, False]      # "n/a" is no position, not an error
    assert truth.radius.tolist() == pytest.approx([3.0, 1.0, loc.default_radius(32)])
    assert truth.label_type.tolist() == ["TB", "FM", "FB"]
    by_type = loc.truth_from_manifest(rows.drop(columns=["label"]), size=64)
    assert by_type.fake.tolist() == [False, True, True]       # no label column: the tampered types are fake
    untyped = loc.truth_from_manifest(rows.drop(columns=["label_type"]), size=64)
    assert untyped.label_type.tolist() == ["", "", ""] and untyped.fake.tolist() == [True, False, True]


def test_the_radius_is_inclusive_for_the_hit_the_energy_and_chance():
    peak_two_away = _spot(5, 4, 2)[None]
    centre, r = np.array([[2.0, 2.0]]), np.array([2.0])
    assert loc.pointing_game(peak_two_away, centre, r).tolist() == [True]
    assert loc.disc_share(centre, np.array([1.0]), 5)[0] == pytest.approx(5 / 25)   # the centre and its 4 neighbours
    np.testing.assert_allclose(loc.disc_energy(np.ones((1, 5, 5)), centre, np.array([1.0])), [5 / 25])


def test_peaks_of_tiny_saliency_values_and_of_empty_maps():
    tiny = np.zeros((1, 4, 4))
    tiny[0, 1, 3] = 1e-6            # gradients are often this small: the tie tolerance is relative
    tiny[0, 0, 0] = 0.5e-6
    np.testing.assert_allclose(loc.peaks(tiny)[0], [3.0, 1.0])
    assert np.isnan(loc.peaks(np.zeros((2, 0, 0)))).all()


def test_spearman_of_two_pixels_and_constant_maps_without_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert loc.spearman(np.array([[0.0, 1.0]]), np.array([[0.0, 2.0]])) == pytest.approx(1.0)
        assert loc.spearman(np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]])) == pytest.approx(-1.0)
        assert np.isnan(loc.spearman(np.ones((2, 2)), np.arange(4.0).reshape(2, 2)))
        flat = np.zeros((2, 2, 2))
        assert np.isnan(loc.randomisation_spearman(flat, flat))   # every pair constant: no value
        a = np.arange(4.0).reshape(2, 2)
        assert loc.randomisation_spearman(np.stack([a, a]), np.stack([-a, flat[0]])) == pytest.approx(-1.0)


def _scattered(n: int, size: int, seed: int) -> tuple[np.ndarray, loc.Truth]:
    rng = np.random.default_rng(seed)
    xy = rng.integers(2, size - 2, (n, 2)).astype(float)
    maps = np.stack([_spot(size, int(x), int(y)) for x, y in xy])
    label_type = np.array(["FM", "FB"] * (n // 2))
    return maps, loc.Truth(xy, np.full(n, 3.0), label_type, np.ones(n, bool))


def test_shuffled_chance_is_seeded_and_handles_zero_or_one_scored_slice():
    maps, truth = _scattered(12, 24, seed=5)
    assert loc.shuffled_chance(maps, truth) == loc.shuffled_chance(maps, truth, seed=0)
    assert loc.shuffled_chance(maps, truth, seed=0) != loc.shuffled_chance(maps, truth, seed=1)
    one = loc.Truth(truth.xy, truth.radius, truth.label_type, np.arange(12) == 4)
    assert loc.shuffled_chance(maps, one) == (1.0, 1.0)     # one slice shuffled among itself stays on its spot
    none = loc.Truth(truth.xy, truth.radius, truth.label_type, np.zeros(12, bool))
    assert all(np.isnan(v) for v in loc.shuffled_chance(maps, none))


def test_localisation_metrics_give_every_key_of_their_split_and_method():
    maps, truth = _scattered(8, 24, seed=6)
    shifted = np.roll(maps, 1, axis=2)
    random_maps = np.stack([maps[0], -maps[1], np.zeros_like(maps[2])])
    out = loc.localisation_metrics("val", "occlusion", shifted, truth, random_maps=random_maps)
    key = lambda name: localisation_key("val", "occlusion", name)  # noqa: E731
    assert set(out) == {"val_localisation_scored", "val_localisation_unpositioned"} | {
        key(name) for name in ("hit_rate", "energy", "hit_rate_chance", "hit_rate_shuffled", "energy_shuffled",
                               "hit_rate_fm", "hit_rate_fb", "randomisation_spearman")}
    assert (out[key("hit_rate_shuffled")], out[key("energy_shuffled")]) == loc.shuffled_chance(shifted, truth, 0)
    seeded = loc.localisation_metrics("val", "occlusion", shifted, truth, seed=3)
    assert (seeded[key("hit_rate_shuffled")], seeded[key("energy_shuffled")]) == loc.shuffled_chance(shifted, truth, 3)
    assert out[key("randomisation_spearman")] == pytest.approx(loc.randomisation_spearman(shifted[:3], random_maps))
    assert out[key("hit_rate")] == 1.0 and out[key("energy")] == 1.0         # one pixel off, r = 3
    assert out[key("hit_rate_chance")] == pytest.approx(loc.disc_share(truth.xy, truth.radius, 24).mean())
    constant = loc.localisation_metrics("val", "occlusion", shifted, truth, random_maps=np.zeros((2, 24, 24)))
    assert key("randomisation_spearman") not in constant


def test_score_slices_give_every_slices_peak_and_only_scored_slices_a_hit():
    maps, truth = _scattered(4, 16, seed=7)
    half = loc.Truth(truth.xy, truth.radius, truth.label_type, np.array([True, False, True, False]))
    scores = loc.score_slices(maps, half)
    np.testing.assert_allclose(scores.peak_xy, truth.xy)
    assert scores.hit[[0, 2]].tolist() == [1.0, 1.0] and np.isnan(scores.hit[[1, 3]]).all()
    assert scores.energy[[0, 2]].tolist() == [1.0, 1.0] and np.isnan(scores.energy[[1, 3]]).all()
