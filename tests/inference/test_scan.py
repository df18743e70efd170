"""The scan step on a tiny phantom: ranges, verdicts, truth evaluation, JSON schema, runtimes, bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import tempfile

import numpy as np
import pandas as pd
import pytest

from medfake.inference import loading
from medfake.inference import scan as sc
from medfake.inference import scan_output
from medfake.core.errors import UserError

SIZE = 64
PATIENT_DATA = ("PHANTOM^", "PHANTOM-", "Phantom General Hospital", "PHACC")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One throwaway MLflow store for the module's tracking tests (a fresh SQLite store takes seconds)."""
    folder = tmp_path_factory.mktemp("scan-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        patch.chdir(folder)
        import mlflow

        mlflow.set_tracking_uri(uri)
        yield uri


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from medfake.data.phantom import write_phantom

    return write_phantom(tmp_path_factory.mktemp("scan") / "phantom", scans=4, lidc_scans=2, size=SIZE, slices=32, seed=3)


@pytest.fixture(scope="module")
def truth_slices(phantom) -> dict[tuple[str, str], set[int]]:
    """(EXP1, uuid) → file numbers a tamper really changed (truth/slices.csv)."""
    table = pd.read_csv(phantom.truth_dir / "slices.csv", dtype={"uuid": str})
    out: dict[tuple[str, str], set[int]] = {}
    for exp, uuid, z in zip(table["experiment"], table["uuid"], table["slice"]):
        out.setdefault((exp.upper(), uuid), set()).add(int(z))
    return out


def ctgan_folder(phantom, key):
    from medfake.data import ctgan

    return ctgan.find_scans(phantom.ctgan_root)[key]


def lidc_folders(phantom):
    from medfake.data import lidc

    return [ref.folder for ref in lidc.find_series(phantom.lidc_root)]


def series_hu(folder):
    from medfake.io.series import DICOMSeries

    series = DICOMSeries.open(folder)
    return series, series.read_hu()


@pytest.fixture(scope="module")
def truth_scorer(phantom, truth_slices) -> loading.Scorer:
    """A deterministic stand-in detector that knows the truth: 0.9 on truly tampered slices, else 0.1.

    It recognises a slice by the hash of its HU pixels, so it checks the scan logic (order,
    numbering, ranges, verdicts, IoU) independently of how well a model learned the phantom.
    """
    from medfake.data import ctgan

    known: dict[str, float] = {}
    for key, folder in ctgan.find_scans(phantom.ctgan_root).items():
        series, hu = series_hu(folder)
        for image, number in zip(hu, series.file_numbers):
            known[hashlib.sha1(image.tobytes()).hexdigest()] = 0.9 if number in truth_slices.get(key, set()) else 0.1

    def predict(batch):
        return np.array([known.get(hashlib.sha1(np.ascontiguousarray(image[..., 0]).tobytes()).hexdigest(), 0.05)
                         for image in batch], np.float32)

    return loading.Scorer("truth", predict, None)


def build_tiny_detector(size: int = SIZE):
    """Built-in Keras layers only (loads anywhere without medfake): HU → P(fake)."""
    import keras

    hu = keras.Input((size, size, 1), name="hu")
    x = keras.layers.Rescaling(1 / 200.0)(hu)
    x = keras.layers.Conv2D(8, 3, activation="relu", padding="same")(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", padding="same")(x)
    x = keras.layers.MaxPooling2D(4)(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", padding="same")(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    return keras.Model(hu, keras.layers.Dense(1, activation="sigmoid", name="probability")(x))


@pytest.fixture(scope="module")
def tiny_trained(phantom, truth_slices, tmp_path_factory):
    """A tiny detector fitted on one tampered CT-GAN scan (truth labels) and one LIDC series.

    It is fitted on the very series the tests scan: what it checks is the scan pipeline (slice
    order, numbering, ranges), not generalisation — a few seconds of CPU cannot buy that here.
    """
    import keras

    key = ("EXP1", "1902")
    series, hu = series_hu(ctgan_folder(phantom, key))
    labels = [int(n in truth_slices[key]) for n in series.file_numbers]
    _, lidc_hu = series_hu(lidc_folders(phantom)[0])
    x = np.concatenate([hu, lidc_hu])[..., None]
    y = np.array(labels + [0] * len(lidc_hu), np.float32)
    keras.utils.set_random_seed(0)
    model = build_tiny_detector()
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy")
    model.fit(x, y, epochs=40, batch_size=16, verbose=0)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return {"model": model, "path": path, "key": key}


def check_schema(report: dict) -> None:
    """Every key of the report schema is present with its type (and nothing is left untyped)."""
    schema = sc.report_schema()

    def check(item: dict, part: str) -> None:
        assert set(item) == set(schema[part]), (part, set(item) ^ set(schema[part]))
        for key, kind in schema[part].items():
            assert isinstance(item[key], kind), (part, key, type(item[key]))

    check(report, "report")
    for series in report["series"]:
        check(series, "series")
        for r in series["ranges"]:
            check(r, "range")
            assert r["first"] <= r["peak_slice"] <= r["last"]
        for s in series["scores"]:
            check(s, "score")
            assert 0.0 <= s["score"] <= 1.0
        for s in series["skipped"]:
            check(s, "skipped")
    for r in report["rejected"]:
        check(r, "rejected")
    if report["evaluation"] is not None:
        check(report["evaluation"], "evaluation")
        for row in report["evaluation"]["per_series"]:
            check(row, "per_series")


# -- truth evaluation (the ranges, rule and z-IoU maths: tests/training/test_verdict.py) ---------------
def test_evaluate_counts_detections_false_alarms_and_iou():
    def report(scan, verdict, ranges):
        return {"series_id": "x", "scan": scan, "verdict": verdict, "slice_numbering": "file number",
                "ranges": [{"first": a, "last": b, "counts": True} for a, b in ranges]}

    truth = {("EXP1", "1"): [(3, 6)], ("EXP1", "2"): [(10, 12)]}
    ev = sc.evaluate([report("EXP1/1", "suspicious", [(4, 7)]), report("EXP1/2", "clean", []),
                      report("EXP1/3", "suspicious", [(0, 1)]), report(None, "clean", [])], truth)
    assert (ev["tampered"], ev["untampered"], ev["detected"], ev["false_alarms"]) == (2, 2, 1, 1)
    assert ev["detection_rate"] == 0.5 and ev["false_alarm_rate"] == 0.5
    assert ev["mean_iou"] == pytest.approx((3 / 5 + 0.0) / 2)
    assert ev["tamper_hit_rate"] == 0.5


# -- the scan logic with a scorer that knows the truth ----------------------------------------------
def test_truth_scorer_flags_exactly_the_tampers(phantom, truth_scorer, truth_slices):
    report = sc.scan(phantom.root, truth_scorer, truth_dir=phantom.truth_dir, model_label="truth")
    check_schema(report)
    check_schema(json.loads(json.dumps(report)))
    by_scan = {s["scan"]: s for s in report["series"]}
    assert {f"{e}/{u}" for e, u in truth_slices} <= set(by_scan)
    for key, true in truth_slices.items():
        s = by_scan[f"{key[0]}/{key[1]}"]
        assert s["verdict"] == "suspicious" and s["slice_numbering"] == "file number"
        flagged = {z for r in s["ranges"] for z in range(r["first"], r["last"] + 1)}
        assert flagged == true
        # slices are file numbers in ascending order, each named by its own file
        assert [r["slice"] for r in s["scores"]] == sorted(r["slice"] for r in s["scores"])
        assert all(r["file"] == f"{r['slice']}.dcm" for r in s["scores"])
    lidc = [s for s in report["series"] if s["scan"] is None]
    assert len(lidc) == 2 and all(s["verdict"] == "clean" and not s["ranges"] for s in lidc)
    ev = report["evaluation"]
    assert ev["detection_rate"] == 1.0 and ev["false_alarm_rate"] == 0.0
    assert ev["mean_iou"] == 1.0 and ev["tamper_hit_rate"] == 1.0
    text = scan_output.format_report(report)
    assert "detection rate 100.0 %" in text and "false-alarm rate 0.0 %" in text


def test_min_slices_rule(phantom, truth_scorer, truth_slices):
    key = next(iter(truth_slices))
    folder = ctgan_folder(phantom, key)
    longest = len(truth_slices[key])
    strict = sc.scan(folder, truth_scorer, min_slices=longest + 1)
    (s,) = strict["series"]
    assert s["verdict"] == "clean" and s["ranges"] and not any(r["counts"] for r in s["ranges"])
    assert f"at least {longest + 1} consecutive slices" in strict["rule"]
    assert "[too short]" in scan_output.format_report(strict)


# -- a real tiny model, end to end -------------------------------------------------------------------
def test_tiny_trained_model_tampered_vs_untampered(phantom, tiny_trained, truth_slices):
    scorer = loading.load_scorer(str(tiny_trained["path"]), runtime="keras")
    tampered = sc.scan(ctgan_folder(phantom, tiny_trained["key"]), scorer)["series"][0]
    clean = sc.scan(lidc_folders(phantom)[0], scorer)["series"][0]
    assert tampered["verdict"] == "suspicious"
    flagged = {z for r in tampered["ranges"] if r["counts"] for z in range(r["first"], r["last"] + 1)}
    true = truth_slices[tiny_trained["key"]]
    assert len(flagged & true) / len(flagged | true) >= 0.5
    assert clean["verdict"] == "clean"
    # the score of slice k is the model's score of file k.dcm (numbering = CT-GAN file numbers)
    import pydicom

    folder = ctgan_folder(phantom, tiny_trained["key"])
    for row in tampered["scores"][::7]:
        ds = pydicom.dcmread(folder / row["file"])
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        expected = float(tiny_trained["model"].predict(hu[None, ..., None], verbose=0)[0, 0])
        assert row["score"] == pytest.approx(expected, abs=1e-5)


def test_runtimes_agree_with_keras_in_float32(phantom, tiny_trained):
    from medfake.models.runtime import available_runtimes

    folder = ctgan_folder(phantom, tiny_trained["key"])
    scores = {}
    for runtime in available_runtimes():
        scorer = loading.load_scorer(str(tiny_trained["path"]), runtime=runtime, precision="float32")
        assert scorer.input_size == SIZE
        report = sc.scan(folder, scorer)
        scores[runtime] = np.array([r["score"] for r in report["series"][0]["scores"]])
    assert "keras" in scores and len(scores) >= 2
    for runtime, values in scores.items():
        assert np.max(np.abs(values - scores["keras"])) <= 1e-3, runtime


def register_champion(model) -> str:
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    mlflow.set_experiment("medfake-scan-test")
    example = np.full((1, SIZE, SIZE, 1), -1000.0, np.float32)
    with mlflow.start_run() as run:
        mlflow.keras.log_model(model, name="model", signature=infer_signature(example, model.predict(example, verbose=0)),
                               pip_requirements=["keras"])
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", "medfake-detector")
    MlflowClient().set_registered_model_alias("medfake-detector", "champion", version.version)
    return run.info.run_id


def test_cli_scan_with_the_champion_json_plot_and_no_patient_data(phantom, tiny_trained, store, tmp_path,
                                                                 capsys, monkeypatch):
    from medfake.cli import main

    run_id = register_champion(tiny_trained["model"])
    scratch = tmp_path / "scratch"  # the temporary folder: scans leave nothing in it
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    folder = ctgan_folder(phantom, tiny_trained["key"])
    out_json, out_png = tmp_path / "scan.json", tmp_path / "scan.png"
    assert main(["scan", str(folder), "--json", str(out_json), "--plot", str(out_png), "--quiet"]) == 0
    stdout = capsys.readouterr().out
    report = json.loads(out_json.read_text())
    check_schema(report)
    (s,) = report["series"]
    assert report["model"] == loading.DEFAULT_MODEL
    assert s["slice_numbering"] == "file number" and s["slices_scored"] == len(list(folder.glob("*.dcm")))
    assert [r["slice"] for r in s["scores"]] == list(range(s["slices_scored"]))
    assert s["verdict"] == "suspicious" and "SUSPICIOUS" in stdout and "profile (slice: P(fake))" in stdout
    assert out_png.is_file() and out_png.stat().st_size > 10_000
    for text in (out_json.read_text(), stdout):
        for secret in PATIENT_DATA:
            assert secret not in text
    assert report["runtime"].endswith("float32")
    # a run id works as --model too; one DICOM file is a series of one slice, numbered by its file
    assert main(["scan", str(folder / "7.dcm"), "--model", run_id, "--runtime", "keras", "--json", "-", "--quiet"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert single["runtime"] == "keras-float32" and single["model"] == run_id
    (one,) = single["series"][0]["scores"]
    assert one["slice"] == 7 and one["file"] == "7.dcm"
    assert one["score"] == pytest.approx(next(r["score"] for r in s["scores"] if r["slice"] == 7), abs=1e-3)
    # MLflow's reader left a copy of the run's model per scan (TensorFlow's autograph keeps a few KB
    # of generated source per traced function there: its own, and no copy of anything)
    assert [p.name for p in scratch.iterdir() if not p.name.startswith("__autograph_generated_file")] == []


def test_scan_root_logged_to_mlflow_without_folder_names(phantom, truth_scorer, store, tmp_path):
    import mlflow

    report = sc.scan(phantom.root, truth_scorer, truth_dir=phantom.truth_dir, model_label="truth")
    plots = scan_output.write_plots(report, tmp_path / "p.png", {}, (-600.0, 1500.0))
    assert len(plots) == len(report["series"]) and all(p.is_file() for p in plots)
    run_id = scan_output.log_to_mlflow(report, "medfake-scan-test", plots, "truth")
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["medfake.stage"] == "scan"
    assert run.data.metrics["scan_detection_rate"] == 1.0 and run.data.metrics["scan_false_alarm_rate"] == 0.0
    logged = mlflow.artifacts.load_text(f"runs:/{run_id}/scan/report.json")
    assert "LIDC-IDRI" not in logged and "CT_Scans" not in logged and '"folder"' not in logged.split('"rejected"')[0]
    names = [a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "scan/plots")]
    assert len(names) == len(plots) and all("EXP" not in n for n in names)


# -- bad input -----------------------------------------------------------------------------------------
def test_resamples_other_sizes_and_says_so(phantom, truth_slices):
    seen = []

    def predict(batch):
        seen.append(batch.shape)
        return np.full(len(batch), 0.2, np.float32)

    notes = []
    report = sc.scan(ctgan_folder(phantom, next(iter(truth_slices))), loading.Scorer("fake", predict, 32),
                     batch_size=8, notes=notes.append)
    assert all(shape[1:] == (32, 32, 1) and shape[0] <= 8 for shape in seen)
    assert report["series"][0]["resampled"] == "slices are 64×64, the model takes 32×32: resampled"
    assert any("resampled" in n for n in notes)


def test_partly_bad_series_is_scored_without_its_bad_slices(phantom, truth_scorer, truth_slices, tmp_path):
    key = next(iter(truth_slices))
    folder = tmp_path / "CT_Scans" / "EXP1_blind" / key[1]
    shutil.copytree(ctgan_folder(phantom, key), folder)
    (folder / "3.dcm").write_bytes((folder / "3.dcm").read_bytes()[:600])  # truncated pixel data
    (folder / "notes.txt").write_text("not a slice")
    report = sc.scan(folder, truth_scorer)
    (s,) = report["series"]
    skipped = {item["file"] for item in s["skipped"]}
    assert {"3.dcm", "notes.txt"} <= skipped
    assert 3 not in [r["slice"] for r in s["scores"]]
    assert s["scan"] == f"EXP1/{key[1]}" and s["verdict"] == "suspicious"
    assert "skipped 3.dcm" in scan_output.format_report(report)


@pytest.mark.parametrize("case", ["empty", "not_dicom", "subfolders"])
def test_no_series_is_one_line_exit_2(tmp_path, capsys, case):
    from medfake.cli import main

    target = tmp_path / "in"
    target.mkdir()
    if case == "not_dicom":
        (target / "a.dcm").write_bytes(b"hello")
    if case == "subfolders":
        (target / "x" / "y").mkdir(parents=True)
        (target / "x" / "y" / "readme.md").write_text("no dicom")
    if case == "empty":
        target = tmp_path / "missing"
    assert main(["scan", str(target), "--model", str(tmp_path / "none.keras")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medfake scan: error:") and "\n" not in err
    expected = {"empty": "no such file or folder", "not_dicom": "no readable DICOM image", "subfolders": "no CT series found"}
    assert expected[case] in err


def test_reader_rejection_reason_reaches_the_user(tmp_path, truth_scorer):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "0.dcm").write_bytes(b"\0" * 10)
    with pytest.raises(UserError, match=r"no readable DICOM image.*0\.dcm"):
        sc.scan(tmp_path / "s", truth_scorer)


def test_missing_alias_is_one_line(store, phantom, capsys):
    from medfake.cli import main

    assert main(["scan", str(phantom.ctgan_root), "--model", "models:/medfake-detector@nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and ("no alias 'nope'" in err or "not found" in err)


def test_endpoint_down_is_one_line(phantom, truth_slices, capsys):
    from medfake.cli import main

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = ctgan_folder(phantom, next(iter(truth_slices)))
    assert main(["scan", str(folder), "--endpoint", f"http://127.0.0.1:{port}", "--image-size", "64",
                 "--timeout", "5", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("medfake scan: error: endpoint http://127.0.0.1:") and "not reachable" in err[-1]


def test_model_argument_resolution(tmp_path):
    assert loading.resolve_model("models:/medfake-detector@champion") == ("mlflow", "models:/medfake-detector@champion")
    assert loading.resolve_model("0123456789abcdef0123456789abcdef") == ("mlflow", "runs:/0123456789abcdef0123456789abcdef/model")
    (tmp_path / "m.onnx").write_bytes(b"x")
    assert loading.resolve_model(str(tmp_path / "m.onnx")) == ("file", str(tmp_path / "m.onnx"))
    with pytest.raises(UserError, match="not a models:/"):
        loading.resolve_model("no-such-model")
    with pytest.raises(UserError, match="MLmodel"):
        loading.resolve_model(str(tmp_path))


def test_truth_file_errors(tmp_path):
    with pytest.raises(UserError, match="no tampers.csv"):
        sc.load_truth(tmp_path)
    (tmp_path / "tampers.csv").write_text("experiment,uuid,z_first\nexp1,1,2\n")
    with pytest.raises(UserError, match="missing column.*z_last"):
        sc.load_truth(tmp_path)
    (tmp_path / "tampers.csv").write_text("experiment,uuid,z_first,z_last\nexp1,1,2,4\nexp9,1,x,4\n")
    with pytest.raises(UserError, match="row 3"):
        sc.load_truth(tmp_path)
