"""The synthetic CT phantom: layouts, valid DICOM, anatomy, truth kept outside DICOM, and a local trace.

The key property (what makes the phantom useful for the study's question): a tamper is a LOCAL
trace. A whole-slice HU histogram cannot tell FB/FM neighbourhoods from TB/TM neighbourhoods of
the same scans (matched negatives), while a local feature inside the true cube clearly can.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medfake.core.errors import UserError
from medfake.data import phantom
from medfake.data.phantom.anatomy import cube_size, make_anatomy
from medfake.data.phantom.render import render_vessels, synthesize_scan
from medfake.data.phantom.tamper import EXPERIMENT_STYLES, GeneratorStyle, Tamper, checkerboard, tamper

SCAN_DIRS = {"exp1": "CT_Scans/EXP1_blind", "exp2": "CT_Scans/EXP2_open"}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> phantom.PhantomInfo:
    """12 CT-GAN-style scans of 64² × ~48 slices and 2 LIDC-style scans (a few seconds)."""
    out = tmp_path_factory.mktemp("phantom") / "data"
    return phantom.write_phantom(out, scans=12, lidc_scans=2, size=64, slices=48, seed=3)


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _labels(info: phantom.PhantomInfo) -> list[dict]:
    rows = []
    for exp in phantom.EXPERIMENTS:
        for row in _read_csv(info.ctgan_root / f"labels_{exp}.csv"):
            rows.append({**row, "experiment": exp})
    return rows


def _read_volume(folder: Path) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    files = sorted(folder.glob("*.dcm"), key=lambda p: int(p.stem))
    datasets = [pydicom.dcmread(f) for f in files]
    hu = np.stack([d.pixel_array.astype(np.float32) * float(d.RescaleSlope) + float(d.RescaleIntercept)
                   for d in datasets])
    return hu, datasets


def _truth_slices(info: phantom.PhantomInfo) -> set[tuple[str, str, int]]:
    return {(r["experiment"], r["uuid"], int(r["slice"])) for r in _read_csv(info.truth_dir / "slices.csv")}


# -- layouts, labels, determinism ---------------------------------------------------------
def test_ctgan_layout_and_labels(small):
    exp_uuids = {}
    for exp, rel in SCAN_DIRS.items():
        folders = sorted(p for p in (small.ctgan_root / rel).iterdir())
        exp_uuids[exp] = {p.name for p in folders}
        for folder in folders:
            assert re.fullmatch(r"\d{4}", folder.name)
            numbers = sorted(int(p.stem) for p in folder.glob("*.dcm"))
            assert numbers == list(range(len(numbers))) and 43 <= len(numbers) <= 53  # 48 ± 10 %
    assert len(exp_uuids["exp1"]) + len(exp_uuids["exp2"]) == 12
    assert len(exp_uuids["exp1"]) > 2 * len(exp_uuids["exp2"]) >= 2  # ~80/20
    assert exp_uuids["exp1"] & exp_uuids["exp2"], "a uuid should appear in both experiments"

    for exp in phantom.EXPERIMENTS:
        with (small.ctgan_root / f"labels_{exp}.csv").open() as handle:
            assert handle.readline().strip() == "type,uuid,slice,x,y"
    labels = _labels(small)
    assert {r["type"] for r in labels} == set(phantom.LABEL_TYPES)
    per_scan: dict[tuple[str, str], list[str]] = {}
    for row in labels:
        assert row["uuid"] in exp_uuids[row["experiment"]]
        folder = small.ctgan_root / SCAN_DIRS[row["experiment"]] / row["uuid"]
        assert (folder / f"{int(row['slice'])}.dcm").is_file()
        assert 0 <= int(row["x"]) < 64 and 0 <= int(row["y"]) < 64
        per_scan.setdefault((row["experiment"], row["uuid"]), []).append(row["type"])
    assert all(1 <= len(types) <= 3 for types in per_scan.values())
    tampered = [types for types in per_scan.values() if set(types) & {"FB", "FM"}]
    assert tampered and all(set(types) & {"TB", "TM"} for types in tampered)  # matched negatives exist


def test_lidc_layout(small):
    patients = sorted(p.name for p in small.lidc_root.iterdir())
    assert patients == ["LIDC-IDRI-0001", "LIDC-IDRI-0002"]
    (study,) = list((small.lidc_root / patients[0]).iterdir())
    (series,) = list(study.iterdir())
    names = sorted(p.name for p in series.glob("*.dcm"))
    assert names[0] == "000001.dcm" and len(names) >= 43
    first = pydicom.dcmread(series / names[0])
    assert (first.StudyInstanceUID, first.SeriesInstanceUID) == (study.name, series.name)


def test_original_layout(tmp_path):
    info = phantom.write_phantom(tmp_path / "orig", scans=2, lidc_scans=0, size=32, slices=32, seed=1,
                                 layout="original")
    scans = info.ctgan_root / "Tampered Scans"
    uuids1 = [p.name for p in (scans / "Experiment 1 - Blind").iterdir()]
    uuids2 = [p.name for p in (scans / "Experiment 2 - Open").iterdir()]
    assert len(uuids1) == len(uuids2) == 1 and uuids1 == uuids2
    assert not (info.ctgan_root / "CT_Scans").exists()
    assert json.loads((info.root / "phantom.json").read_text())["params"]["layout"] == "original"


def test_same_seed_gives_same_bytes(tmp_path):
    args = dict(scans=2, lidc_scans=1, size=32, slices=32, seed=5)
    first = phantom.write_phantom(tmp_path / "a", **args)
    second = phantom.write_phantom(tmp_path / "b", **args)
    other = phantom.write_phantom(tmp_path / "c", **{**args, "seed": 6})
    files = sorted(p.relative_to(first.root) for p in first.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second.root) for p in second.root.rglob("*") if p.is_file())
    assert all((first.root / f).read_bytes() == (second.root / f).read_bytes() for f in files)
    some = next(f for f in files if f.suffix == ".dcm")
    assert pydicom.dcmread(first.root / some).SOPInstanceUID == pydicom.dcmread(second.root / some).SOPInstanceUID
    other_dcm = sorted(other.root.rglob("*.dcm"))[0]
    assert pydicom.dcmread(other_dcm).SOPInstanceUID != pydicom.dcmread(first.root / some).SOPInstanceUID


# -- DICOM content ------------------------------------------------------------------------
def test_dicom_is_valid_ct(small):
    folder = next((small.ctgan_root / SCAN_DIRS["exp1"]).iterdir())
    hu, datasets = _read_volume(folder)
    d0 = datasets[0]
    assert d0.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert d0.Modality == "CT" and d0.SOPClassUID == pydicom.uid.CTImageStorage
    assert (d0.Rows, d0.Columns, d0.SamplesPerPixel, d0.PhotometricInterpretation) == (64, 64, 1, "MONOCHROME2")
    assert (d0.BitsAllocated, d0.BitsStored, d0.HighBit, d0.PixelRepresentation) == (16, 12, 11, 0)
    assert (float(d0.RescaleSlope), float(d0.RescaleIntercept)) == (1.0, -1024.0)
    assert [float(v) for v in d0.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert float(d0.PixelSpacing[0]) == pytest.approx(0.7 * 512 / 64)
    assert (float(d0.WindowCenter), float(d0.WindowWidth)) == (-600.0, 1500.0)
    assert d0.InstitutionName == "Phantom General Hospital" and d0.PatientName.family_name == "PHANTOM"
    assert len({d.SOPInstanceUID for d in datasets}) == len(datasets)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID"):
        assert len({str(d.get(keyword)) for d in datasets}) == 1
    assert [d.InstanceNumber for d in datasets] == list(range(1, len(datasets) + 1))
    z = np.array([float(d.ImagePositionPatient[2]) for d in datasets])
    assert np.all(np.diff(z) < 0)  # file 0 at the head, z falls toward the feet
    assert np.allclose(np.diff(z), -float(d0.SliceThickness), atol=1e-3)
    assert hu.min() >= -1024 and hu.max() <= 3071
    assert np.median(hu[:, :3, :3]) == pytest.approx(-1000, abs=40)  # air in the corners
    assert (hu > 500).any()  # bone


def test_no_truth_inside_dicom(small):
    """Nothing in a DICOM header says tamper or label; tampered and clean series carry the same tags."""
    labels = _labels(small)
    tampered = {(r["experiment"], r["uuid"]) for r in labels if r["type"] in ("FB", "FM")}
    clean = {(r["experiment"], r["uuid"]) for r in labels} - tampered
    assert tampered and clean
    forbidden = re.compile(r"tamper|inject|remov|\b(FB|FM|TB|TM)\b", re.IGNORECASE)
    keyword_sets = {}
    for exp, uuid in sorted(tampered)[:2] + sorted(clean)[:1]:
        for path in (small.ctgan_root / SCAN_DIRS[exp] / uuid).glob("*.dcm"):
            ds = pydicom.dcmread(path)
            for element in [*ds.file_meta, *ds]:
                if element.keyword != "PixelData":
                    assert not forbidden.search(str(element.value)), (path.name, element.keyword)
                assert not element.tag.is_private
            keyword_sets[(exp, uuid)] = frozenset(e.keyword for e in ds)
    assert len(set(keyword_sets.values())) == 1


# -- truth ---------------------------------------------------------------------------------
def test_truth_matches_labels(small):
    labels = _labels(small)
    tampers = _read_csv(small.truth_dir / "tampers.csv")
    assert list(tampers[0]) == ["experiment", "uuid", "type", "slice", "x", "y", "z", "z_first", "z_last",
                                "half_size", "nodule_radius_mm"]
    key = lambda r: (r["experiment"], r["uuid"], r["type"], int(r["slice"]), int(r["x"]), int(r["y"]))  # noqa: E731
    assert sorted(map(key, tampers)) == sorted(key(r) for r in labels if r["type"] in ("FB", "FM"))
    slices = _read_csv(small.truth_dir / "slices.csv")
    expected = set()
    for t in tampers:
        assert int(t["z_first"]) <= int(t["slice"]) == int(t["z"]) <= int(t["z_last"])
        assert int(t["half_size"]) == cube_size(64) // 2 == 6
        for z in range(int(t["z_first"]), int(t["z_last"]) + 1):
            h = int(t["half_size"])
            x, y = int(t["x"]), int(t["y"])
            expected.add((t["experiment"], t["uuid"], z, x - h, y - h, x + h, y + h))
    got = {(r["experiment"], r["uuid"], int(r["slice"]), int(r["x0"]), int(r["y0"]), int(r["x1"]), int(r["y1"]))
           for r in slices}
    assert got == expected
    meta = json.loads((small.root / "phantom.json").read_text())
    assert meta["params"] == dict(scans=12, lidc_scans=2, size=64, slices=48, seed=3, layout="new")
    assert meta["counts"]["labels"] == {t: sum(r["type"] == t for r in labels) for t in phantom.LABEL_TYPES}


def test_true_extent_varies_around_the_studys_five_slices(small):
    tampers = _read_csv(small.truth_dir / "tampers.csv")
    halves = [int(t["slice"]) - int(t["z_first"]) for t in tampers]
    halves += [int(t["z_last"]) - int(t["slice"]) for t in tampers]
    assert min(halves) < 5 < max(halves)
    truth = _truth_slices(small)
    window = [(t["experiment"], t["uuid"], int(t["slice"]) + k) for t in tampers for k in range(-5, 6)]
    share = np.mean([w in truth for w in window])
    assert 0.6 < share < 1.0  # most ±5 neighbours are tampered, not all (the study's label noise)


# -- anatomy ---------------------------------------------------------------------------------
def _lung_fraction(image: np.ndarray) -> float:
    """Share of the slice that is air-like tissue inside the body outline (lungs, airways)."""
    smooth = ndimage.gaussian_filter(image, 1)
    body = ndimage.binary_erosion(ndimage.binary_fill_holes(smooth > -400), iterations=2)
    return float((body & (smooth < -700)).mean())


def test_anatomy_varies_along_z():
    anatomy = make_anatomy(11, size=64, slices=48)
    volume = synthesize_scan(anatomy)
    lung_air = np.array([_lung_fraction(image) for image in volume])
    assert lung_air[:3].max() < 0.02, "neck: no lungs"
    assert lung_air[-3:].max() < 0.02, "abdomen: no lungs"
    assert lung_air[15:35].max() > 0.1, "thorax: lungs"
    assert ((volume > 400).mean(axis=(1, 2)) > 0).all(), "bone on every slice"
    noise = volume[:, :4, :4].std()
    assert 5 < noise < 40  # scanner noise in the air


def test_vessels_are_continuous_along_z():
    anatomy = make_anatomy(5, size=128, slices=120)
    fields = [render_vessels(anatomy, k * anatomy.geometry.slice_mm, anatomy.geometry.coordinates_mm)
              for k in (60, 61, 70)]
    near = np.corrcoef(fields[0].ravel(), fields[1].ravel())[0, 1]
    far = np.corrcoef(fields[0].ravel(), fields[2].ravel())[0, 1]
    assert fields[0].sum() > 0 and not np.array_equal(fields[0], fields[1])
    assert near > far + 0.2


# -- the tamper is a local trace --------------------------------------------------------------
def _matched_slices(info: phantom.PhantomInfo):
    """Whole-slice histograms of FB/FM labels ± 5 (positives) and TB/TM labels ± 5 (negatives)."""
    truth = _truth_slices(info)
    features, target, groups, truly = [], [], [], []
    by_scan: dict[tuple[str, str], list[dict]] = {}
    for row in _labels(info):
        by_scan.setdefault((row["experiment"], row["uuid"]), []).append(row)
    for (exp, uuid), rows in sorted(by_scan.items()):
        hu, _ = _read_volume(info.ctgan_root / SCAN_DIRS[exp] / uuid)
        for row in rows:
            for z in range(int(row["slice"]) - 5, int(row["slice"]) + 6):
                if 0 <= z < len(hu):
                    counts, _ = np.histogram(hu[z], bins=32, range=(-1100, 1500))
                    features.append(counts / counts.sum())
                    target.append(int(row["type"] in ("FB", "FM")))
                    groups.append(uuid)  # the same uuid in both experiments is one patient
                    truly.append((exp, uuid, z) in truth)
    return np.array(features), np.array(target), np.array(groups), np.array(truly)


def test_whole_slice_histogram_cannot_find_tampers(small):
    features, target, groups, truly = _matched_slices(small)
    assert not truly[target == 0].any(), "matched negatives must be untampered"
    assert truly[target == 1].mean() > 0.6
    scores = np.zeros(len(target))
    for train, test in GroupKFold(n_splits=4).split(features, target, groups):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        scores[test] = model.fit(features[train], target[train]).predict_proba(features[test])[:, 1]
    auc = roc_auc_score(target, scores)
    assert auc <= 0.75, f"whole-slice histogram AUC {auc:.3f}: the tamper leaks a global trace"


def _checker_response(image: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> float:
    """Median of (4-neighbour high-pass × period-2 checkerboard) in a box: a local, robust feature."""
    highpass = image - (np.roll(image, 1, 0) + np.roll(image, -1, 0) + np.roll(image, 1, 1) + np.roll(image, -1, 1)) / 4
    return float(np.median(highpass[y0:y1, x0:x1] * checkerboard(range(y0, y1), range(x0, x1))))


def test_local_feature_sees_the_tamper(small):
    truth = _truth_slices(small)
    tampered, clean = [], []
    for t in _read_csv(small.truth_dir / "tampers.csv"):
        hu, _ = _read_volume(small.ctgan_root / SCAN_DIRS[t["experiment"]] / t["uuid"])
        x, y, c = int(t["x"]), int(t["y"]), 4  # the flat centre of the 12-px cube
        box = (x - c, y - c, x + c, y + c)
        for z in range(len(hu)):
            if (t["experiment"], t["uuid"], z) in truth:
                if int(t["z_first"]) <= z <= int(t["z_last"]):
                    tampered.append(_checker_response(hu[z], *box))
            else:
                clean.append(_checker_response(hu[z], *box))
    auc = roc_auc_score(np.r_[np.ones(len(tampered)), np.zeros(len(clean))], np.r_[tampered, clean])
    assert auc >= 0.95, f"local checkerboard feature AUC {auc:.3f}"
    assert np.median(tampered) - np.median(clean) > 20


def test_tamper_changes_only_its_cube():
    anatomy = make_anatomy(2, size=64, slices=40)
    volume = synthesize_scan(anatomy)
    spec = Tamper(kind="FM", slice=20, row=30, col=20, z_first=17, z_last=25, half_size=6,
                          nodule_radius_px=0.0, texture_sigma=anatomy.noise_sigma, seed=1)
    out = tamper(volume, spec)
    changed = np.argwhere(out != volume)
    assert changed[:, 0].min() >= 17 and changed[:, 0].max() <= 25
    assert changed[:, 1].min() >= 24 and changed[:, 1].max() < 36
    assert changed[:, 2].min() >= 14 and changed[:, 2].max() < 26
    inside, before = out[17:26, 27:33, 17:23], volume[17:26, 27:33, 17:23]
    assert abs(inside.mean() - before.mean()) < 15  # the texture swap keeps the level ...
    assert 0.5 < inside.std() / before.std() < 2.5  # ... and roughly the spread
    with_nodule = tamper(volume, Tamper("FM", 20, 30, 20, 17, 25, 6, nodule_radius_px=2.5,
                                                        nodule_hu=60.0, seed=1))
    assert with_nodule[20, 30, 20] > volume[20, 30, 20] + 300  # a nodule appeared in lung


# -- write, reuse, CLI ------------------------------------------------------------------------
def test_ensure_phantom_reuses_and_replaces_incomplete(tmp_path):
    out = tmp_path / "ph"
    (out / "ctgan").mkdir(parents=True)  # an interrupted run: no phantom.json
    args = dict(scans=2, lidc_scans=0, size=32, slices=32, seed=2)
    first = phantom.ensure_phantom(out, **args)
    assert not first.reused and (out / "phantom.json").is_file()
    stamp = (out / "phantom.json").stat().st_mtime_ns
    again = phantom.ensure_phantom(out, **args)
    assert again.reused and (out / "phantom.json").stat().st_mtime_ns == stamp
    assert again.counts == first.counts
    assert not list(tmp_path.glob("ph.tmp-*")) and not list(tmp_path.glob("ph.old-*"))


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a phantom folder"):
        phantom.write_phantom(tmp_path, scans=2, lidc_scans=0, size=32, slices=32)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# -- the simulated shift between experiments ---------------------------------------------------
def test_experiments_use_different_seeded_generator_settings(small):
    assert EXPERIMENT_STYLES["exp1"] == GeneratorStyle()  # experiment 1: the setting before the shift
    assert EXPERIMENT_STYLES["exp2"] != EXPERIMENT_STYLES["exp1"]
    meta = json.loads((small.root / "phantom.json").read_text())
    assert set(meta["generator"]) == {"exp1", "exp2"} and meta["generator"]["exp1"] != meta["generator"]["exp2"]
    anatomy = make_anatomy(2, size=64, slices=40)
    volume = synthesize_scan(anatomy)
    spec = Tamper(kind="FM", slice=20, row=30, col=20, z_first=17, z_last=25, half_size=6,
                  nodule_radius_px=2.0, texture_sigma=anatomy.noise_sigma, seed=4)
    first = tamper(volume, dataclasses.replace(spec, style=EXPERIMENT_STYLES["exp2"]))
    again = tamper(volume, dataclasses.replace(spec, style=EXPERIMENT_STYLES["exp2"]))
    np.testing.assert_array_equal(first, again)  # seeded: same spec, same bytes
    other = tamper(volume, spec)
    changed = np.argwhere(first != other)
    assert len(changed) and changed[:, 1].min() >= 24 and changed[:, 1].max() < 36  # only inside the cube


def test_experiment_two_tampers_leave_no_stronger_trace():
    """The shift must not make tampers easier: experiment 2's local trace is at most experiment 1's."""
    anatomy = make_anatomy(9, size=64, slices=40)
    volume = synthesize_scan(anatomy)
    responses = {}
    for exp, style in EXPERIMENT_STYLES.items():
        values = []
        for seed in range(6):
            spec = Tamper(kind="FM", slice=20, row=30, col=22, z_first=17, z_last=23, half_size=6,
                          nodule_radius_px=0.0, texture_sigma=anatomy.noise_sigma, seed=seed, style=style)
            out = tamper(volume, spec)
            values += [_checker_response(out[z], 18, 26, 26, 34) - _checker_response(volume[z], 18, 26, 26, 34)
                       for z in range(17, 24)]
        responses[exp] = float(np.median(values))
    assert 0 < responses["exp2"] <= responses["exp1"], responses
