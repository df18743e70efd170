"""The dataset rules beyond the fakes (study section 3.2 and DESIGN §2): which negatives, which
patients, and what each selected slice carries.

* matched negatives: untampered TB/TM label windows of the same scans, drawn one per fake without
  replacement by the data seed, topped up from LIDC at the fakes' relative z when too few;
* by_experiment: a patient of experiment 2 (tested) leaves experiment 1 (trained on);
* random LIDC negatives (the study's): exactly one per fake, from series the build can decode;
* phantom truth and tamper positions travel with each fake; problem lines never name the scan.

The inputs are tiny DICOM trees selected by the same function the preprocess step uses.
"""

from __future__ import annotations

import numpy as np
import pytest

from medfake.core.errors import UserError
from medfake.io.privacy import deidentify
from protocol_trees import config, ctgan_tree, lidc_tree, select


@pytest.fixture(scope="module")
def lidc(tmp_path_factory):
    """Four 60-slice LIDC series: room for top-ups that land on the same relative z."""
    return lidc_tree(tmp_path_factory.mktemp("lidc"), series=4, slices=60)


def _split_by_label(candidates):
    return [c for c in candidates if c.label == 1], [c for c in candidates if c.label == 0]


def _where(candidates) -> list[tuple[str, int]]:
    return [(c.series_key, c.position) for c in candidates]


# -- matched negatives ----------------------------------------------------------------------------
def test_matched_negatives_are_one_per_fake_from_untampered_windows_drawn_by_the_data_seed(tmp_path):
    # CSV rows out of slice order; FB at 10 → 11 fakes (5 … 15); TM at 50, TB at 30 → 22 untampered
    ctgan = ctgan_tree(tmp_path / "ctgan", {"1001": 60}, [("TM", "1001", 50), ("FB", "1001", 10), ("TB", "1001", 30)])
    cfg = config(ctgan, None, "data.negatives=matched", "data.seed=3")
    series, candidates, _problems = select(cfg, ctgan, None)
    fakes, negatives = _split_by_label(candidates)
    assert candidates == fakes + negatives  # fakes first, then the negatives
    assert [c.slice for c in fakes] == list(range(5, 16))
    assert len(negatives) == len(fakes) == 11 and {c.source for c in negatives} == {"ctgan"}
    pool = list(range(25, 36)) + list(range(45, 56))  # the untampered windows, in slice order
    drawn = np.sort(np.random.default_rng(3).choice(len(pool), size=11, replace=False))
    assert [c.slice for c in negatives] == [pool[i] for i in drawn]  # without replacement, sorted
    assert {c.label_type for c in negatives} <= {"TB", "TM"} and set(series) == {"ctgan/EXP1/1001"}
    assert {(c.x, c.y, c.radius) for c in negatives} == {("", "", "")}  # tamper positions are for fakes only
    for c in negatives:
        kind = "TB" if c.slice <= 35 else "TM"
        centre = 30 if kind == "TB" else 50
        assert c.label_type == kind and c.provenance.endswith(f"({kind}) offset {c.slice - centre:+d}")
    again = select(config(ctgan, None, "data.negatives=matched", "data.seed=4"), ctgan, None)[1]
    assert [c.slice for c in _split_by_label(again)[1]] != [c.slice for c in negatives]  # the seed draws


def test_an_untampered_slice_inside_a_tampered_window_is_never_a_negative(tmp_path):
    # TB at 14 reaches 9 … 19; FB at 10 makes 5 … 15 fake, so only 16 … 19 are untampered
    ctgan = ctgan_tree(tmp_path / "ctgan", {"1001": 60}, [("FB", "1001", 10), ("TB", "1001", 14), ("TM", "1001", 40)])
    _series, candidates, _problems = select(config(ctgan, None, "data.negatives=matched"), ctgan, None)
    fakes, negatives = _split_by_label(candidates)
    assert not {c.slice for c in fakes} & {c.slice for c in negatives}
    assert {c.slice for c in negatives} <= set(range(16, 20)) | set(range(35, 46))


def test_exactly_as_many_matched_negatives_as_fakes_need_no_lidc(tmp_path):
    ctgan = ctgan_tree(tmp_path / "ctgan", {"1001": 60}, [("FB", "1001", 10), ("TB", "1001", 40)])
    _series, candidates, _problems = select(config(ctgan, None, "data.negatives=matched"), ctgan, None)
    fakes, negatives = _split_by_label(candidates)
    assert [c.slice for c in negatives] == list(range(35, 46)) and len(fakes) == 11


def test_too_few_matched_negatives_are_topped_up_from_lidc_at_the_fakes_relative_z(tmp_path, lidc):
    # 22 fakes (FB at 10 and 40), 11 untampered (TB at 25): 11 LIDC slices at the fakes' z
    ctgan = ctgan_tree(tmp_path / "ctgan", {"1001": 60}, [("FB", "1001", 40), ("TB", "1001", 25), ("FB", "1001", 10)])
    cfg = config(ctgan, lidc, "data.negatives=matched", "data.seed=5")
    series, candidates, _problems = select(cfg, ctgan, lidc)
    fakes, negatives = _split_by_label(candidates)
    assert len(fakes) == 22 and len(negatives) == 22
    assert _where(fakes) == sorted(_where(fakes))
    matched = [c for c in negatives if c.source == "ctgan"]
    topped = [c for c in negatives if c.source == "lidc"]
    assert [c.slice for c in matched] == list(range(20, 31)) and negatives == matched + topped
    assert len(topped) == 11 and {c.label_type for c in topped} == {"lidc_matched_z"}
    # the targets: 11 fakes' relative z drawn with replacement by the data seed; 60-slice LIDC
    # series put the nearest slice exactly there
    fake_z = [c.relative_z for c in fakes]
    targets = [fake_z[i] for i in np.random.default_rng(5).choice(22, size=11, replace=True)]
    assert sorted(c.relative_z for c in topped) == pytest.approx(sorted(targets))
    assert sorted(c.provenance for c in topped) == sorted(f"LIDC top-up at z={z:.2f}" for z in targets)
    assert len(set(_where(topped))) == 11  # never the same LIDC slice twice
    assert {c.series_key for c in topped} <= set(series)  # the build can decode them


def test_matched_negatives_without_lidc_to_top_up_are_one_clear_line(tmp_path):
    ctgan = ctgan_tree(tmp_path / "ctgan", {"1001": 60}, [("FB", "1001", 10), ("TB", "1001", 40), ("FM", "1001", 20)])
    with pytest.raises(UserError) as raised:
        select(config(ctgan, None, "data.negatives=matched"), ctgan, None)
    assert str(raised.value) == (
        "matched negatives: 11 untampered labelled slices for 21 fakes; "
        "set data.lidc_root (or MEDFAKE_LIDC_ROOT) to top up from LIDC")


def test_labels_with_no_tampered_slice_are_one_clear_line(tmp_path, lidc):
    ctgan = ctgan_tree(tmp_path / "ctgan", {"1001": 30}, [("TB", "1001", 10), ("TM", "1001", 20)])
    with pytest.raises(UserError) as raised:
        select(config(ctgan, lidc), ctgan, lidc)
    assert str(raised.value) == f"{ctgan}: the labels name no FB/FM (tampered) slice"


# -- random LIDC negatives (the study's) ----------------------------------------------------------
def test_random_lidc_negatives_are_one_per_fake_from_series_the_build_can_decode(tmp_path, lidc):
    ctgan = ctgan_tree(tmp_path / "ctgan", {"1002": 40, "1001": 40}, [("FM", "1002", 30), ("FB", "1001", 20), ("FM", "1001", 5)])
    series, candidates, _problems = select(config(ctgan, lidc), ctgan, lidc)
    fakes, negatives = _split_by_label(candidates)
    assert candidates == fakes + negatives and len(fakes) == 33 == len(negatives)
    assert _where(fakes) == sorted(_where(fakes))  # by scan, then position
    assert {c.label_type for c in negatives} == {"lidc_random"} and len(set(_where(negatives))) == 33
    assert {c.series_key for c in candidates} <= set(series)


# -- by_experiment: no patient in both train and test ----------------------------------------------
def test_by_experiment_drops_the_experiment_1_slices_of_a_patient_tested_in_experiment_2(tmp_path, lidc):
    root = tmp_path / "ctgan"
    ctgan_tree(root, {"1001": 30, "1002": 30, "1003": 30},
               [("FB", "1001", 10), ("FM", "1002", 10), ("FB", "1003", 15)], experiment="EXP1")
    ctgan_tree(root, {"1002": 30, "1003": 30, "2001": 30},
               [("FB", "1002", 20), ("FM", "1003", 5), ("FM", "2001", 10)], experiment="EXP2")
    _series, candidates, problems = select(config(root, lidc, "data.split=by_experiment"), root, lidc)
    fakes, negatives = _split_by_label(candidates)
    kept = {(c.experiment, c.group) for c in fakes}
    shared = sorted([deidentify("ctgan", "1002"), deidentify("ctgan", "1003")])
    assert kept == {("EXP1", deidentify("ctgan", "1001")), ("EXP2", shared[0]), ("EXP2", shared[1]),
                    ("EXP2", deidentify("ctgan", "2001"))}
    assert len(fakes) == 11 + 11 + 11 + 11 and len(negatives) == len(fakes)  # negatives balance the kept fakes
    assert (f"split by_experiment: 2 patient(s) appear in both experiments (scan {shared[0]}, {shared[1]}): "
            "their experiment-1 slices are left out") in problems
    # the study's random split keeps both scans of each patient
    _series, candidates, problems = select(config(root, lidc), root, lidc)
    assert len(_split_by_label(candidates)[0]) == 66 and not any("by_experiment" in p for p in problems)


# -- what each fake carries ------------------------------------------------------------------------
def test_phantom_truth_and_tamper_positions_travel_with_each_fake(tmp_path, lidc):
    ctgan = ctgan_tree(tmp_path / "ctgan", {"1001": 30, "1002": 30}, [("FM", "1001", 10, 2, 6), ("FB", "1002", 12, 5, 1)])
    truth = tmp_path / "truth"
    truth.mkdir()
    tampered = [("EXP1", "1001", s) for s in range(8, 13)] + [("EXP1", "1002", 12)]
    (truth / "slices.csv").write_text("experiment,uuid,slice\n" + "".join(f"{e},{u},{s}\n" for e, u, s in tampered))
    (truth / "tampers.csv").write_text("experiment,uuid,slice,half_size\nEXP1,1001,10,2.0\n")
    _series, candidates, _problems = select(config(ctgan, lidc), ctgan, lidc, truth_dir=truth)
    fakes, negatives = _split_by_label(candidates)
    for c in fakes:
        uuid = "1001" if c.group == deidentify("ctgan", "1001") else "1002"
        assert c.truly_tampered == ("1" if ("EXP1", uuid, c.slice) in tampered else "0")
    # 8² slices stored at 32²: a pixel centre v maps to (v + 0.5) · 4 − 0.5; half-size 2 → 8
    one = [c for c in fakes if c.group == deidentify("ctgan", "1001")]
    two = [c for c in fakes if c.group == deidentify("ctgan", "1002")]
    assert {(c.x, c.y, c.radius) for c in one} == {("9.50", "25.50", "8.00")}
    assert {(c.x, c.y, c.radius) for c in two} == {("21.50", "5.50", "")}  # no tamper size known
    assert {(c.truly_tampered, c.x) for c in negatives} == {("", "")}
    # without phantom truth nothing is claimed
    _series, candidates, _problems = select(config(ctgan, lidc), ctgan, lidc)
    assert {c.truly_tampered for c in candidates} == {""}


def test_a_two_slice_scan_spans_relative_z_0_to_1(tmp_path, lidc):
    ctgan = ctgan_tree(tmp_path / "ctgan", {"1001": 2}, [("FM", "1001", 1)])
    fakes, _negatives = _split_by_label(select(config(ctgan, lidc), ctgan, lidc)[1])
    assert [(c.position, c.relative_z) for c in fakes] == [(0, 0.0), (1, 1.0)]


def test_problem_lines_name_the_deidentified_scan_once_each_and_never_its_folder(tmp_path, lidc):
    uuid = "73311"
    ctgan = ctgan_tree(tmp_path / "ctgan", {uuid: 20, "1001": 20}, [("FM", uuid, 10), ("FB", "1001", 10)])
    (ctgan / "CT_Scans" / "EXP1_blind" / "1001" / "19.dcm").write_bytes(b"not dicom")  # another scan's problem
    folder = ctgan / "CT_Scans" / "EXP1_blind" / uuid
    (folder / "7.dcm").write_bytes(b"not dicom" * 20)           # an unreadable slice
    (folder / f"{uuid}.dcm").write_bytes(b"not dicom" * 20)     # a file named like its scan
    (folder / "EXP1.dcm").write_bytes(b"not dicom" * 20)        # and like its experiment
    (folder / "3.dcm").rename(folder / "swap")                  # 3 and 4 out of position order
    (folder / "4.dcm").rename(folder / "3.dcm")
    (folder / "swap").rename(folder / "4.dcm")
    _series, candidates, problems = select(config(ctgan, lidc), ctgan, lidc)
    scan, other = deidentify("ctgan", uuid), deidentify("ctgan", "1001")
    assert f"scan {other}: skipped 19.dcm: not a DICOM file" in problems  # each scan's lines are kept
    problems = [p for p in problems if not p.startswith(f"scan {other}: ")]
    assert problems and all(p.startswith(f"scan {scan}: ") for p in problems)
    assert not any(uuid in p or "EXP1" in p for p in problems)
    assert f"scan {scan}: skipped 7.dcm: not a DICOM file" in problems
    assert f"scan {scan}: skipped ….dcm: not a DICOM file" in problems  # both name-alike files
    assert sum(p.endswith("….dcm: not a DICOM file") for p in problems) == 2
    assert f"scan {scan}: 3 files skipped (see skipped files)" in problems
    assert sum("do not follow the ImagePositionPatient order" in p for p in problems) == 1  # said once
    assert 7 not in {c.slice for c in candidates if c.label == 1 and c.group == scan}  # the unreadable slice is not selected


def test_lidc_top_up_takes_the_nearest_slice_of_a_random_series_and_runs_out_clearly():
    from medfake.data.build import _lidc_matched_z

    series = {"b": [None] * 21, "a": [None] * 11}  # z = 0.5 is slice 10 of b and slice 5 of a
    used: set = set()
    first = _lidc_matched_z(series, [0.5, 0.5, 0.0, 1.0], np.random.default_rng(2), used)
    assert sorted(_where(first[:2])) == [("a", 5), ("b", 10)]  # the second 0.5 goes to the other series
    assert {(c.series_key, c.position) for c in first[2:]} <= {("a", 0), ("b", 0), ("a", 10), ("b", 20)}
    assert [c.relative_z for c in first] == [0.5, 0.5, 0.0, 1.0]
    assert [c.provenance for c in first] == ["LIDC top-up at z=0.50"] * 2 + ["LIDC top-up at z=0.00", "LIDC top-up at z=1.00"]
    assert {c.label_type for c in first} == {"lidc_matched_z"} and {c.label for c in first} == {0}
    assert used == set(_where(first))
    order = np.random.default_rng(7).permutation(2)[0]  # the series tried first is the seed's
    (one,) = _lidc_matched_z(series, [0.5], np.random.default_rng(7), set())
    assert one.series_key == ["a", "b"][int(order)]
    with pytest.raises(UserError, match=r"^not enough LIDC slices to top up the matched negatives$"):
        _lidc_matched_z(series, [0.5], np.random.default_rng(2), used)


def test_a_scan_without_positions_says_its_label_slices_were_not_checked_against_them(tmp_path, lidc):
    from dicom_factory import write_series

    ctgan = ctgan_tree(tmp_path / "ctgan", {"1001": 20}, [("FM", "1001", 10)])
    folder = ctgan / "CT_Scans" / "EXP1_blind" / "1001"
    for path in folder.iterdir():
        path.unlink()
    write_series(folder, np.zeros((20, 8, 8), np.int16), positions=[None] * 20)  # no (0020,0032)
    _series, candidates, problems = select(config(ctgan, lidc), ctgan, lidc)
    scan = deidentify("ctgan", "1001")
    assert problems == [
        f"scan {scan}: slices have no usable ImagePositionPatient (0020,0032): file order not checked against positions",
        f"scan {scan}: no ImagePositionPatient (0020,0032): slices ordered by InstanceNumber",
    ]
    assert [c.slice for c in candidates if c.label == 1] == list(range(5, 16))
