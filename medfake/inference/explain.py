"""The ``explain`` step: where a detector looks, on a dataset split or a DICOM series, scored against the truth.

For ``--model`` (a run id, ``runs:/…``, ``models:/…``, an MLflow model folder or a ``.keras`` file,
as ``scan`` takes it) it maps slices with Grad-CAM (the backbone's last convolutional block) and
occlusion sensitivity, and writes under ``--out``: one overlay per slice (the slice in the CT window,
the heatmap, the truth marker where known, the peak marker), a montage of the k most confident fakes
and the k worst misses (tampered slices the detector scored lowest), ``slices.csv`` (one row per
slice), and with ``--json FILE`` one record per slice in the model's input coordinates. An ONNX or
OpenVINO file gets occlusion only (it has no gradients). With a dataset split the localisation
metrics (``{split}_cam_hit_rate`` …) are printed and, with ``--mlflow`` (the default for a run),
logged with everything else to a child run of stage ``explain`` under the detector's run.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from medfake.core.config import add_config_arguments, config_from_args
from medfake.core.contract import STAGE_EXPLAIN, TAG_DATA_DIGEST
from medfake.core.errors import UserError
from medfake.inference import loading
from medfake.training import localisation as loc

METHODS = ("cam", "occlusion")
RECORD_KEYS = ("scan_id", "slice", "label_type", "score", "truth_xy", "radius", "peak_xy", "hit", "energy")
CSV_COLUMNS = ("scan_id", "slice", "label_type", "label", "score", "truth_x", "truth_y", "radius",
               "cam_peak_x", "cam_peak_y", "cam_hit", "cam_energy",
               "occlusion_peak_x", "occlusion_peak_y", "occlusion_hit", "occlusion_energy")


@dataclass
class Detector:
    """What explains: the Keras model (None for an ONNX/OpenVINO file), a predict function, its input size."""

    keras_model: object | None
    predict: Callable[[np.ndarray], np.ndarray]
    size: int
    run_id: str | None
    window: tuple[float, float] | None


# -- the model -------------------------------------------------------------------------------------
def _window_of(model) -> tuple[float, float] | None:
    """(center, width) of a detector's own CT window layer ("ct_window_scale": x·255/width − low·255/width)."""
    try:
        layer = model.get_layer("ct_window_scale")
    except ValueError:
        return None
    scale, offset = float(np.ravel(layer.scale)[0]), float(np.ravel(layer.offset)[0])
    width = 255.0 / scale
    return -offset / scale + width / 2.0, width


def _run_id_of(uri: str) -> str | None:
    if uri.startswith("runs:/"):
        return uri[len("runs:/"):].split("/", 1)[0]
    return None


def load_detector(text: str) -> Detector:
    """The detector of ``--model``; the histogram baseline or a missing run is a one-line UserError."""
    from medfake.models import runtime as rt

    kind, location = loading.resolve_model(text)
    if kind == "file":
        if Path(location).suffix.lower() == rt.RUNTIMES["keras"][1]:
            try:
                model = rt.load_keras_file(Path(location))
            except (OSError, ValueError) as exc:
                raise UserError(f"--model {location}: not a loadable Keras model ({' '.join(str(exc).split())[:160]})") from None
            return _keras_detector(model, None)
        loaded = rt.load_runtime(location)
        size = loading._file_input_size(loaded)
        if not size:
            raise UserError(f"--model {location}: the export has no fixed input size to explain at")
        return Detector(None, loaded.predict, size, None, None)
    info = loading.mlflow_model_info(location)
    run_id = getattr(info, "run_id", None) or _run_id_of(location)
    if "keras" not in info.flavors:
        raise UserError(f"--model {location} is not a Keras CNN (flavours: {', '.join(sorted(info.flavors))}): the "
                        "HU-histogram baseline has no convolutional block to explain")
    import medfake.models.detector  # noqa: F401 - registers the detector's own layers for loading
    from medfake.core import logged_models

    model = logged_models.load_keras(location)
    return _keras_detector(model, run_id)


def _keras_detector(model, run_id: str | None) -> Detector:
    from medfake.models import saliency

    saliency.cam_model(model)  # a model without a convolutional block fails here, in one line
    return Detector(model, lambda x: np.asarray(model.predict_on_batch(x), np.float32).reshape(-1),
                    int(model.input_shape[1]), run_id, _window_of(model))


# -- the slices --------------------------------------------------------------------------------------
def dataset_slices(cfg, split: str, digest: str | None, size: int, progress: bool) -> tuple[np.ndarray, pd.DataFrame, str]:
    """HU slices (n, S, S, 1) of a split resized to the model, its manifest rows, and the dataset digest."""
    from medfake.data.preprocess import ensure_dataset
    from medfake.io.transforms import resize

    dataset, _ = ensure_dataset(cfg, progress=progress, digest=digest)
    manifest = dataset.manifest
    if split not in set(manifest["split"]):
        raise UserError(f"--split {split}: dataset {dataset.digest} has no such split ({', '.join(sorted(set(manifest['split'])))})")
    if "x" not in manifest.columns:
        print(f"medfake explain: note: dataset {dataset.digest} predates tamper positions (no x/y in its manifest); "
              f"remove {dataset.path} and preprocess again to score the maps", file=sys.stderr)
    rows = manifest[manifest["split"] == split].reset_index(drop=True)
    images = np.asarray(dataset.images[rows["row"].to_numpy()], np.float32)
    rows.attrs["data_size"] = images.shape[-1]
    if images.shape[-1] != size:
        images = resize(images, size)
    return images[..., None], rows, dataset.digest


def series_slices(path: str, detector: Detector, max_slices: int) -> tuple[np.ndarray, pd.DataFrame]:
    """The ``max_slices`` highest-scoring slices of the DICOM series under PATH (no truth: positions unknown)."""
    from medfake.inference.scan_series import find_series, score_series
    from medfake.io.privacy import deidentify
    from medfake.io.transforms import resize

    sources, _ = find_series(path)
    scorer = loading.Scorer("explain", detector.predict, detector.size)
    images, rows = [], []
    for source in sources:
        series = source.opener()
        scored = score_series(series, scorer)
        best = np.argsort(-scored["scores"], kind="stable")[:max_slices]
        hu = series.read_hu([scored["indices"][i] for i in best])
        images.append(resize(hu, detector.size) if hu.shape[-1] != detector.size else hu)
        scan_id = deidentify("dicom", str(source.folder.resolve()))
        rows += [{"scan_id": scan_id, "slice": scored["slices"][i], "label_type": "", "label": -1} for i in best]
    return np.concatenate(images)[..., None].astype(np.float32), pd.DataFrame(rows)


# -- maps, records, files -------------------------------------------------------------------------
def explain_maps(detector: Detector, images: np.ndarray, rows: pd.DataFrame, window: tuple[float, float],
                 methods: tuple[str, ...], split: str, seed: int, occlusion_limit: int | None = None) -> loc.SplitMaps:
    """Maps of every slice (occlusion: a seeded sample of ``occlusion_limit``) and the split's metrics.

    Without a Keras model (an ONNX/OpenVINO file) only occlusion, of every slice.
    """
    if detector.keras_model is not None:
        return loc.explain_slices(detector.keras_model, images, rows, window, split, methods, only_scored=False,
                                  seed=seed, data_size=rows.attrs.get("data_size"), occlusion_limit=occlusion_limit)
    from medfake.models import saliency

    truth = loc.truth_from_manifest(rows, detector.size, rows.attrs.get("data_size"))
    patch = loc.occlusion_patch(truth.radius[truth.scored], detector.size)
    maps = {"occlusion": saliency.occlusion(detector.predict, images, saliency.background_hu(window), patch=patch)}
    scores = np.concatenate([detector.predict(images[i:i + 16]) for i in range(0, len(images), 16)])
    metrics = loc.localisation_metrics(split, "occlusion", maps["occlusion"], truth, seed=seed)
    return loc.SplitMaps(np.arange(len(images)), scores, maps, metrics)


def _xy(value) -> list[float] | None:
    return None if value is None or not np.all(np.isfinite(value)) else [round(float(v), 2) for v in value]


def records(rows: pd.DataFrame, result: loc.SplitMaps, size: int) -> tuple[list[dict], list[dict]]:
    """(JSON records, CSV rows): one per slice; hit/energy null where the slice has no position."""
    truth = loc.truth_from_manifest(rows, size, rows.attrs.get("data_size"))
    scores = {m: loc.score_slices(maps, truth) for m, maps in result.maps.items()}
    mapped = {m: ~np.isnan(maps).all(axis=(1, 2)) for m, maps in result.maps.items()}  # occlusion: a sample
    primary = "cam" if "cam" in scores else "occlusion"
    out_json, out_csv = [], []
    for i, row in enumerate(rows.itertuples(index=False)):
        scored = bool(truth.scored[i]) and bool(mapped[primary][i])
        s = scores[primary]
        out_json.append({
            "scan_id": str(row.scan_id), "slice": int(row.slice), "label_type": str(row.label_type),
            "score": round(float(result.scores[i]), 6),
            "truth_xy": _xy(truth.xy[i]) if truth.scored[i] else None,
            "radius": round(float(truth.radius[i]), 2) if truth.scored[i] else None,
            "peak_xy": _xy(s.peak_xy[i]),
            "hit": bool(s.hit[i]) if scored else None,
            "energy": round(float(s.energy[i]), 4) if scored else None,
        })
        line = {"scan_id": row.scan_id, "slice": int(row.slice), "label_type": row.label_type,
                "label": int(getattr(row, "label", -1)), "score": f"{result.scores[i]:.6g}",
                "truth_x": f"{truth.xy[i, 0]:.2f}" if truth.scored[i] else "",
                "truth_y": f"{truth.xy[i, 1]:.2f}" if truth.scored[i] else "",
                "radius": f"{truth.radius[i]:.2f}" if truth.scored[i] else ""}
        for method in METHODS:
            found = scores.get(method) if method in scores and mapped[method][i] else None
            peak = found.peak_xy[i] if found is not None else np.full(2, np.nan)
            line |= {f"{method}_peak_x": "" if not np.isfinite(peak[0]) else f"{peak[0]:.1f}",
                     f"{method}_peak_y": "" if not np.isfinite(peak[1]) else f"{peak[1]:.1f}",
                     f"{method}_hit": "" if found is None or not truth.scored[i] else int(found.hit[i]),
                     f"{method}_energy": "" if found is None or not truth.scored[i] else f"{found.energy[i]:.4f}"}
        out_csv.append(line)
    return out_json, out_csv


def _overlay(axes, image: np.ndarray, heat: np.ndarray, window, record: dict, title: str) -> None:
    from medfake.io.transforms import window_uint8

    axes.imshow(window_uint8(image, *window), cmap="gray", vmin=0, vmax=255)
    top = float(heat.max())
    if top > 0:
        axes.imshow(heat / top, cmap="jet", alpha=0.4, vmin=0, vmax=1)
    if record["truth_xy"]:
        from matplotlib.patches import Circle

        axes.add_patch(Circle(record["truth_xy"], record["radius"], fill=False, color="lime", linewidth=1.5))
    if record["peak_xy"]:
        axes.plot(*record["peak_xy"], marker="x", color="white", markersize=8, markeredgewidth=2)
    axes.set_title(title, fontsize=8)
    axes.set_axis_off()


def write_figures(out: Path, images: np.ndarray, result: loc.SplitMaps, items: list[dict], window, k: int) -> list[Path]:
    """One overlay per slice (every method side by side) and the montage; returns the files written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = list(result.maps)
    folder = out / "overlays"
    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def save(figure, path):
        FigureCanvasAgg(figure)
        figure.savefig(path, dpi=100, bbox_inches="tight")
        written.append(path)

    for i, item in enumerate(items):
        figure = Figure(figsize=(2.6 * len(methods), 2.8))
        for axes, method in zip(figure.subplots(1, len(methods), squeeze=False)[0], methods):
            _overlay(axes, images[i, ..., 0], result.maps[method][i], window, item, f"{method} · P(fake) {item['score']:.3f}")
        # the row number first: one scan id can hold the same slice twice (a uuid in both CT-GAN experiments)
        save(figure, folder / f"{i:04d}_{item['scan_id'][:10]}_slice{item['slice']:04d}.png")
    scores = np.array([item["score"] for item in items])
    fakes = [i for i, item in enumerate(items) if item["label_type"] in ("FM", "FB") or item["truth_xy"]]
    confident = list(np.argsort(-scores, kind="stable")[:k])
    misses = sorted(fakes, key=lambda i: scores[i])[:k]
    panels = [("most confident", i) for i in confident] + [("worst miss", i) for i in misses]
    if panels:
        figure = Figure(figsize=(2.4 * max(len(confident), len(misses), 1), 2.6 * (1 + bool(misses))))
        grid = figure.subplots(1 + bool(misses), max(len(confident), len(misses), 1), squeeze=False)
        for axes in grid.ravel():
            axes.set_axis_off()
        for n, (what, i) in enumerate(panels):
            axes = grid[0][n] if what == "most confident" else grid[1][n - len(confident)]
            item = items[i]
            _overlay(axes, images[i, ..., 0], result.maps[methods[0]][i], window, item,
                     f"{what}: {item['label_type'] or '?'} {item['score']:.3f}")
        save(figure, out / "montage.png")
    return written


def _write_csv(path: Path, lines: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(lines)


def log_to_mlflow(detector: Detector, out: Path, metrics: dict, params: dict, digest: str | None) -> str:
    """A child run of stage ``explain`` under the detector's run (same experiment): metrics and every file."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from medfake.core import tracking

    client = MlflowClient()
    parent = client.get_run(detector.run_id)
    experiment = client.get_experiment(parent.info.experiment_id).name
    tags = {"mlflow.parentRunId": detector.run_id}
    if digest:
        tags[TAG_DATA_DIGEST] = digest
    with tracking.run(experiment, f"explain-{parent.info.run_name or detector.run_id[:8]}", STAGE_EXPLAIN,
                      tags=tags, detached=True) as active:
        tracking.log_params(params)
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        mlflow.log_artifacts(str(out), "explain")
        return active.info.run_id


# -- CLI ---------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", default="", metavar="PATH",
                        help="a DICOM series folder, file or root (default: the dataset split of --config)")
    parser.add_argument("--model", required=True, help="run id, runs:/…, models:/…, MLflow model folder or .keras/.onnx/.xml file")
    add_config_arguments(parser)
    parser.add_argument("--split", default="test", help="dataset split to explain (default: test)")
    parser.add_argument("--data", default="", help="dataset digest (default: the detector run's, else the config's)")
    parser.add_argument("--methods", default="cam,occlusion", help="comma-separated: cam, occlusion")
    parser.add_argument("--out", default="explain", help="folder for overlays, montage and slices.csv (default: ./explain)")
    parser.add_argument("--json", default="", metavar="FILE", help="also write one JSON record per slice")
    parser.add_argument("--top-k", type=int, default=6, help="slices per montage row (default: 6)")
    parser.add_argument("--max-slices", type=int, default=16, help="PATH: explain the N highest-scoring slices per series")
    parser.add_argument("--occlusion-slices", type=int, default=32,
                        help="occlusion maps of a seeded sample of N slices (64 forward passes each; 0: all)")
    parser.add_argument("--mlflow", action=argparse.BooleanOptionalAction, default=None,
                        help="log to a child run of the detector's run (default: on when --model is a run)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _methods(text: str, keras: bool) -> tuple[str, ...]:
    chosen = tuple(m.strip() for m in str(text).split(",") if m.strip())
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        raise UserError(f"--methods {text!r}: choose from {', '.join(METHODS)}")
    if not keras and "cam" in chosen:
        print("medfake explain: note: an ONNX/OpenVINO export has no gradients; occlusion only", file=sys.stderr)
        chosen = ("occlusion",)
    return chosen


def _run_digest(run_id: str | None) -> str | None:
    if not run_id:
        return None
    from mlflow.tracking import MlflowClient

    return MlflowClient().get_run(run_id).data.tags.get(TAG_DATA_DIGEST)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.top_k < 1 or args.max_slices < 1:
        raise UserError("--top-k and --max-slices must be ≥ 1")
    detector = load_detector(args.model)
    methods = _methods(args.methods, detector.keras_model is not None)
    use_mlflow = detector.run_id is not None if args.mlflow is None else args.mlflow
    if use_mlflow and not detector.run_id:
        raise UserError("--mlflow needs --model to be a run (a run id or runs:/…), not a file")
    window = detector.window or (cfg.data.window.center, cfg.data.window.width)
    digest = None
    if args.path:
        if not Path(args.path).exists():
            raise UserError(f"PATH {args.path} does not exist")
        images, rows = series_slices(args.path, detector, args.max_slices)
    else:
        images, rows, digest = dataset_slices(cfg, args.split, args.data or _run_digest(detector.run_id),
                                              detector.size, not args.quiet)
    result = explain_maps(detector, images, rows, window, methods, args.split, cfg.seed,
                          args.occlusion_slices if args.occlusion_slices > 0 else None)
    items, lines = records(rows, result, detector.size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "slices.csv", lines)
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2, sort_keys=True))
    write_figures(out, images, result, items, window, args.top_k)
    if args.json:
        Path(args.json).write_text(json.dumps(items, indent=1))
    for key, value in sorted(result.metrics.items()):
        print(f"  {key:<40} {value:.4f}")
    print(f"{len(items)} slices explained ({', '.join(methods)}): overlays, montage.png and slices.csv in {out}")
    if use_mlflow:
        params = {"model": args.model, "methods": ",".join(methods), "split": "" if args.path else args.split}
        child = log_to_mlflow(detector, out, result.metrics, params, digest)
        print(f"MLflow run {child} (stage {STAGE_EXPLAIN}, child of {detector.run_id})")
    return 0
