"""``medfake scan --explain DIR``: an overlay of each range's peak slice and the peak in the slice's own pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medfake.inference import loading
from medfake.inference import scan as sc
from medfake.inference import scan_explain as se
from medfake.inference.scan_output import format_report

SIZE = 64
WINDOW = (-600.0, 1500.0)


@pytest.fixture(scope="module")
def series_folder(tmp_path_factory):
    from medfake.data import ctgan
    from medfake.data.phantom import write_phantom

    phantom = write_phantom(tmp_path_factory.mktemp("scan-explain") / "phantom", scans=2, lidc_scans=0, size=SIZE,
                            slices=32, seed=5)
    return next(iter(sorted(ctgan.find_scans(phantom.ctgan_root).items())))[1]


def region_predict(batch: np.ndarray) -> np.ndarray:
    """A stand-in detector at 32² that looks only at rows 8..11, columns 20..23 of its input."""
    assert batch.shape[1:] == (32, 32, 1)
    mean = batch[:, 8:12, 20:24, 0].mean(axis=(1, 2))
    return (1.0 / (1.0 + np.exp(-(mean + 600.0) / 500.0))).astype(np.float32)


def test_occlusion_peak_maps_back_to_the_slice_pixels(series_folder, tmp_path):
    scorer = loading.Scorer("region", region_predict, 32)
    opened: dict = {}
    report = sc.scan(series_folder, scorer, threshold=0.0, min_slices=1, keep_series=opened)
    explainer = se.Explainer("occlusion", 32, WINDOW, predict=region_predict)
    written = se.explain_ranges(report, opened, explainer, tmp_path / "overlays", WINDOW)
    (series,) = report["series"]
    assert len(written) == len(series["ranges"]) >= 1
    for path in written:
        assert path.is_file() and path.stat().st_size > 2_000 and path.suffix == ".png"
    # the 4-pixel occlusion patch over input rows 8..11 / columns 20..23 is the peak: its centre (21.5, 9.5)
    # at 32² is (43.5, 19.5) in the 64² slice, mapped like the resize (pixel centres aligned)
    for r in series["ranges"]:
        assert r["peak_xy"] == [43.5, 19.5]
    assert "(x 44, y 20)" in format_report(report)


def tiny_keras_detector(size: int = SIZE):
    """A plain Keras model (no registry backbone) with fixed positive weights: its Grad-CAM is not all zero."""
    import keras

    hu = keras.Input((size, size, 1), name="hu")
    x = keras.layers.Rescaling(1 / 1000.0, offset=1.0)(hu)
    x = keras.layers.Conv2D(4, 3, activation="relu", padding="same", kernel_initializer="ones")(x)
    x = keras.layers.MaxPooling2D(4)(x)
    x = keras.layers.Conv2D(4, 3, activation="relu", padding="same", kernel_initializer="ones", name="last_conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(hu, keras.layers.Dense(1, activation="sigmoid", kernel_initializer="ones",
                                              bias_initializer=keras.initializers.Constant(-5.0))(x))


def test_cli_scan_explain_writes_overlays_and_peaks_inside_the_slice(series_folder, tmp_path, capsys):
    from medfake.cli import main
    from medfake.io.series import DICOMSeries

    path = tmp_path / "tiny.keras"
    tiny_keras_detector().save(path)
    out_json, folder = tmp_path / "scan.json", tmp_path / "overlays"
    argv = ["scan", str(series_folder), "--model", str(path), "--runtime", "keras", "--threshold", "0",
            "--min-slices", "1", "--explain", str(folder), "--json", str(out_json), "--quiet"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    report = json.loads(out_json.read_text())
    (series,) = report["series"]
    assert series["ranges"] and "peak-slice overlay(s) written" in stdout and "(x " in stdout
    dicom = DICOMSeries.open(series_folder)
    for r in series["ranges"]:
        x, y = r["peak_xy"]
        assert 0 <= x <= dicom.columns - 1 and 0 <= y <= dicom.rows - 1
        assert isinstance(r["peak_xy"], list) and set(r) == set(sc.report_schema()["range"])
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == len(series["ranges"]) and all(p.stat().st_size > 2_000 for p in pngs)
    # a plain Keras model is mapped with Grad-CAM at its last feature map
    explainer = se.explainer_for(str(path), loading.load_scorer(str(path), runtime="keras"), False, WINDOW)
    assert explainer.method == "cam" and explainer.cam.layer == "last_conv"


def test_without_explain_the_ranges_carry_no_peak(series_folder):
    scorer = loading.Scorer("region", region_predict, 32)
    report = sc.scan(series_folder, scorer, threshold=0.0, min_slices=1)
    assert all(r["peak_xy"] is None for s in report["series"] for r in s["ranges"])


def test_explain_into_a_file_is_one_line(series_folder, tmp_path, capsys):
    from medfake.cli import main

    path = tmp_path / "tiny.keras"
    tiny_keras_detector().save(path)
    clash = tmp_path / "taken"
    clash.write_text("a file, not a folder")
    assert main(["scan", str(series_folder), "--model", str(path), "--runtime", "keras", "--threshold", "0",
                 "--explain", str(clash), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--explain" in err and "Traceback" not in err


def test_an_endpoint_or_export_is_explained_by_occlusion(tmp_path):
    scorer = loading.Scorer("endpoint", region_predict, 32)
    explainer = se.explainer_for("unused", scorer, True, WINDOW)
    assert explainer.method == "occlusion" and explainer.predict is region_predict and explainer.size == 32
    export = tmp_path / "model.onnx"
    export.write_bytes(b"not read: an export is explained through the scorer")
    assert se.explainer_for(str(export), scorer, False, WINDOW).method == "occlusion"
