"""The study's dataset rules pinned to its numbers (DESIGN §2, study section 3.2).

* every FB/FM label at slice s makes exactly the slices s−5 … s+5 that exist in the scan fake
  (clipped at the scan's ends, never shifted inwards);
* 113 well-separated labels give the study's 1,243 fake slices, and as many random LIDC slices
  make 2,486 images;
* the 70/15/15 split of 2,486 images has the study's 373-slice test set.

The inputs are real (tiny) DICOM trees in the CT-GAN and LIDC layouts, selected by the same
public function the preprocess step uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medfake.data import build as dataset_rules
from medfake.data.splits import assign_splits as _assign_splits
from protocol_trees import config as _config
from protocol_trees import ctgan_tree as _ctgan_tree
from protocol_trees import lidc_tree as _lidc_tree

STUDY_RADIUS = 5
STUDY_LABELS = 113
STUDY_FAKES = 1243
STUDY_IMAGES = 2486
STUDY_TEST_SLICES = 373


def _split(candidates, how: str, fractions, seed: int) -> np.ndarray:
    labels = np.array([c.label for c in candidates])
    groups = np.array([c.group for c in candidates])
    return _assign_splits(labels, groups, how, fractions, seed)


def _select(cfg, ctgan: Path, lidc: Path):
    inputs = dataset_rules.Inputs(ctgan, lidc)
    _series, candidates = dataset_rules.select_slices(cfg, inputs, progress=False)
    return candidates


def _fake_slices(candidates) -> dict[str, list[int]]:
    """Fake slice numbers per scan (the scan's de-identified id)."""
    out: dict[str, list[int]] = {}
    for c in candidates:
        if c.label == 1:
            out.setdefault(c.group, []).append(c.slice)
    return {k: sorted(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def small_lidc(tmp_path_factory):
    return _lidc_tree(tmp_path_factory.mktemp("lidc-small"), series=1, slices=60)


@pytest.mark.parametrize(
    "length, label, expected",
    [
        (30, 12, range(7, 18)),   # inside the scan: s-5 … s+5, eleven slices
        (30, 2, range(0, 8)),     # near the first slice: clipped to 0 … s+5, not shifted to 0 … 10
        (30, 0, range(0, 6)),
        (30, 27, range(22, 30)),  # near the last slice: s-5 … n-1
        (30, 29, range(24, 30)),
        (6, 3, range(0, 6)),      # a scan shorter than the window: all of it
    ],
)
def test_a_label_makes_exactly_the_slices_within_five_fake(tmp_path, small_lidc, length, label, expected):
    ctgan = _ctgan_tree(tmp_path / "ctgan", {"1001": length}, [("FM", "1001", label)])
    cfg = _config(ctgan, small_lidc)
    assert cfg.data.slice_radius == STUDY_RADIUS
    candidates = _select(cfg, ctgan, small_lidc)
    (slices,) = _fake_slices(candidates).values()
    assert slices == list(expected)
    fakes = [c for c in candidates if c.label == 1]
    assert {c.label_type for c in fakes} == {"FM"} and {c.source for c in fakes} == {"ctgan"}
    offsets = sorted(int(c.provenance.rsplit(" ", 1)[-1]) for c in fakes)
    assert offsets == [s - label for s in expected]  # provenance names each slice's offset from its label
    negatives = [c for c in candidates if c.label == 0]
    assert len(negatives) == len(fakes) and {c.source for c in negatives} == {"lidc"}


def test_overlapping_windows_count_each_slice_once_and_untampered_labels_are_not_fake(tmp_path, small_lidc):
    labels = [("FB", "1001", 10), ("FM", "1001", 14), ("TM", "1001", 30), ("TB", "1001", 45)]
    ctgan = _ctgan_tree(tmp_path / "ctgan", {"1001": 50}, labels)
    candidates = _select(_config(ctgan, small_lidc), ctgan, small_lidc)
    (slices,) = _fake_slices(candidates).values()
    assert slices == list(range(5, 20))  # 5 … 15 ∪ 9 … 19
    by_slice = {c.slice: c for c in candidates if c.label == 1}
    assert by_slice[11].label_type == "FB" and by_slice[13].label_type == "FM"  # the nearest label names it


def test_the_radius_is_the_configs(tmp_path, small_lidc):
    ctgan = _ctgan_tree(tmp_path / "ctgan", {"1001": 30}, [("FB", "1001", 15)])
    candidates = _select(_config(ctgan, small_lidc, "data.slice_radius=2"), ctgan, small_lidc)
    assert list(_fake_slices(candidates).values()) == [[13, 14, 15, 16, 17]]


@pytest.fixture(scope="module")
def study_sized(tmp_path_factory):
    """113 FB/FM labels, five per 55-slice scan at slices 5, 16, 27, 38, 49 (windows never touch
    and never reach an end), and an LIDC root with enough slices for 1,243 random negatives."""
    root = tmp_path_factory.mktemp("study-sized")
    centres = [5, 16, 27, 38, 49]
    labels = []
    for index in range(STUDY_LABELS):
        uuid = str(2000 + index // len(centres))
        labels.append(("FB" if index % 2 else "FM", uuid, centres[index % len(centres)]))
    scans = {uuid: 55 for _kind, uuid, _s in labels}
    ctgan = _ctgan_tree(root / "ctgan", scans, labels)
    lidc = _lidc_tree(root / "lidc", series=2, slices=640)
    cfg = _config(ctgan, lidc)
    return cfg, _select(cfg, ctgan, lidc)


def test_113_labels_give_the_studys_1243_fakes_and_2486_balanced_images(study_sized):
    _cfg, candidates = study_sized
    fakes = [c for c in candidates if c.label == 1]
    negatives = [c for c in candidates if c.label == 0]
    assert len(fakes) == STUDY_FAKES == STUDY_LABELS * (2 * STUDY_RADIUS + 1)
    assert len(negatives) == STUDY_FAKES
    assert len(candidates) == STUDY_IMAGES
    assert {c.label_type for c in fakes} == {"FB", "FM"}
    assert {c.label_type for c in negatives} == {"lidc_random"} and {c.source for c in negatives} == {"lidc"}
    assert len({(c.series_key, c.position) for c in negatives}) == STUDY_FAKES  # drawn without replacement


def test_the_paper_split_gives_the_studys_373_test_slices(study_sized):
    cfg, candidates = study_sized
    assert tuple(cfg.data.split_fractions) == (0.70, 0.15, 0.15) and cfg.data.split == "random"
    split = _split(candidates, cfg.data.split, cfg.data.split_fractions, cfg.data.seed)
    labels = np.array([c.label for c in candidates])
    sizes = {name: int((split == name).sum()) for name in ("train", "val", "test")}
    assert sizes == {"train": 1740, "val": 373, "test": STUDY_TEST_SLICES}
    # Stratified: each split holds both classes in the data's 1:1 ratio (±1 slice).
    for name in ("train", "val", "test"):
        fakes = int(labels[split == name].sum())
        assert abs(2 * fakes - sizes[name]) <= 1, (name, fakes, sizes[name])
    again = _split(candidates, cfg.data.split, cfg.data.split_fractions, cfg.data.seed)
    assert (again == split).all()  # the data seed fixes the split


def _candidate(index: int, label: int, group: str):
    return dataset_rules.Candidate(
        source="ctgan", series_key=group, group=group, position=index, slice=index, label=label, label_type="FM",
        provenance="", relative_z=0.0,
    )


def test_split_fractions_must_be_three_positive_numbers_summing_to_one():
    from medfake.core.errors import UserError

    candidates = [_candidate(i, i % 2, f"g{i % 6}") for i in range(40)]
    for bad in ((0.7, 0.2, 0.2), (0.85, 0.15, 0.0), (1.1, -0.05, -0.05)):
        with pytest.raises(UserError, match="split_fractions"):
            _split(candidates, "random", bad, 0)


def test_by_scan_split_keeps_every_scan_in_one_split():
    candidates = [_candidate(i, int(i % 20 < 10), f"scan{i // 20}") for i in range(400)]
    split = _split(candidates, "by_scan", (0.70, 0.15, 0.15), 0)
    groups = np.array([c.group for c in candidates])
    for group in set(groups):
        assert len(set(split[groups == group])) == 1
    sizes = {name: int((split == name).sum()) for name in ("train", "val", "test")}
    assert set(sizes) == {"train", "val", "test"} and min(sizes.values()) > 0
    assert sizes["train"] > sizes["val"] and sizes["train"] > sizes["test"]


# -- what each fake slice carries (mutation testing found these unasserted) --------------------
def test_a_tie_between_two_labels_keeps_the_first_labels_provenance(tmp_path, small_lidc):
    # slice 12 is +2 from the FB label at 10 and −2 from the FM label at 14: equally near
    ctgan = _ctgan_tree(tmp_path / "ctgan", {"1001": 30}, [("FB", "1001", 10), ("FM", "1001", 14)])
    by_slice = {c.slice: c for c in _select(_config(ctgan, small_lidc), ctgan, small_lidc) if c.label == 1}
    assert by_slice[12].label_type == "FB" and by_slice[12].provenance.endswith("(FB) offset +2")
    assert by_slice[13].label_type == "FM" and by_slice[13].provenance.endswith("(FM) offset -1")
    assert by_slice[12].provenance.startswith("labels_exp1.csv row ")


def test_fake_slices_name_their_scan_position_and_experiment(tmp_path, small_lidc):
    from medfake.io.privacy import deidentify

    ctgan = _ctgan_tree(tmp_path / "ctgan", {"1001": 21, "1002": 21}, [("FM", "1001", 10), ("FB", "1002", 3)])
    inputs = dataset_rules.Inputs(ctgan, small_lidc)
    series, candidates = dataset_rules.select_slices(_config(ctgan, small_lidc), inputs, progress=False)
    fakes = [c for c in candidates if c.label == 1]
    assert {c.group for c in fakes} == {deidentify("ctgan", "1001"), deidentify("ctgan", "1002")}
    assert {c.series_key for c in fakes} == {"ctgan/EXP1/1001", "ctgan/EXP1/1002"}
    assert {"ctgan/EXP1/1001", "ctgan/EXP1/1002"} <= set(series)
    assert len(series["ctgan/EXP1/1001"]) == 21 and len(series["ctgan/EXP1/1002"]) == 21  # the scans, opened
    assert {c.experiment for c in fakes} == {"EXP1"}
    for c in fakes:  # a 21-slice scan: position p of 0 … 20 is p / 20 of the way along z
        assert c.position == c.slice and c.relative_z == pytest.approx(c.position / 20)


def test_a_label_for_a_scan_that_is_not_there_names_its_csv_row(tmp_path, small_lidc):
    from medfake.core.errors import UserError

    ctgan = _ctgan_tree(tmp_path / "ctgan", {"1001": 20}, [("FM", "1001", 10), ("FB", "1001", 4)])
    with open(ctgan / "labels_exp1.csv", "a") as handle:
        handle.write("FM,4242,7,4,4\n")
    with pytest.raises(UserError, match=r"row \d+.*4242|4242.*row \d+") as raised:
        _select(_config(ctgan, small_lidc), ctgan, small_lidc)
    assert len(str(raised.value).splitlines()) == 1


def test_lidc_random_negatives_draw_every_slice_once_without_reusing_any():
    # the study's negatives: LIDC slices drawn uniformly over all series, none twice, none already used
    from medfake.core.errors import UserError

    _lidc_random = dataset_rules._lidc_random
    series = {"b": [None] * 5, "a": [None] * 3, "c": [None] * 1}   # 9 slices; sorted keys a, b, c
    every = {(key, position) for key, items in series.items() for position in range(len(items))}
    used: set = set()
    drawn = _lidc_random(series, 9, np.random.default_rng(0), used)
    assert sorted((c.series_key, c.position) for c in drawn) == sorted(every)  # series boundaries exact
    assert used == every
    assert {c.provenance for c in drawn} == {"random LIDC slice"} and {c.label for c in drawn} == {0}
    assert all(c.slice == c.position and c.relative_z == c.position / max(len(series[c.series_key]) - 1, 1)
               for c in drawn)
    # slices already taken are skipped, and exactly as many as remain can still be drawn
    used = {("a", 0), ("b", 4)}
    drawn = _lidc_random(series, 7, np.random.default_rng(1), used)
    assert {(c.series_key, c.position) for c in drawn} == every - {("a", 0), ("b", 4)}
    with pytest.raises(UserError, match=r"^LIDC root has 9 slices, fewer than the 8 negatives needed$"):
        _lidc_random(series, 8, np.random.default_rng(1), {("a", 0), ("b", 4)})
    again = _lidc_random(series, 4, np.random.default_rng(5), set())
    assert [(c.series_key, c.position) for c in again] == [
        (c.series_key, c.position) for c in _lidc_random(series, 4, np.random.default_rng(5), set())]
