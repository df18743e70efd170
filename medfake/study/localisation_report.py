"""Report (issue 13): where the screened detectors look — Table 1's localisation columns and one
Grad-CAM overlay per model on the same tampered test slice.

The columns are the train step's ``test_{cam,occlusion}_…`` metrics (``eval.explain``); a column no
run logged is left out. The figure is optional and cheap: one slice, one map per model, drawn only
where the run's logged Keras model loads and the dataset is in the local cache (the slice's pixels
and tamper position are not in the store); the baseline and runs without a model are left out.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from medfake.core.contract import LOCALISATION_SCORED, localisation_key, metric_key
from medfake.core.errors import UserError
from medfake.study.tables import fmt, markdown_table
from medfake.training import localisation as loc

FIGURE_NAME = "figure_localisation_overlays.png"
# (method, metric, column title): the Table 1 columns, in this order, where any run logged them
COLUMNS = tuple(
    (method, metric, f"{label} {title}")
    for method, label in (("cam", "Grad-CAM"), ("occlusion", "Occlusion"))
    for metric, title in (("hit_rate", "hit rate"), ("hit_rate_chance", "chance"), ("energy", "energy"),
                          ("hit_rate_fm", "hit FM"), ("hit_rate_fb", "hit FB"),
                          ("randomisation_spearman", "randomisation ρ"))
)
SCORED = metric_key("test", LOCALISATION_SCORED)


def column_keys() -> list[str]:
    return [localisation_key("test", method, metric) for method, metric, _ in COLUMNS]


def with_columns(frame, selection):
    """Table 1's frame with the localisation columns (NaN where a run did not log them), by run id."""
    frame = frame.copy()
    by_run = {entry.run_id: entry.metrics for entry in selection.ranked}
    for key in [SCORED, *column_keys()]:
        frame[key] = [by_run.get(run_id, {}).get(key, math.nan) for run_id in frame["run_id"]]
    return frame


def table_markdown(frame) -> str | None:
    """The localisation columns some run logged, beside the slices they were scored on; None when none has any."""
    keys = [key for key in column_keys() if key in frame.columns and frame[key].notna().any()]
    if not keys:
        return None
    titles = dict(zip(column_keys(), (title for _, _, title in COLUMNS)))
    rows = [[row["model"], fmt(row.get(SCORED, math.nan), 0), *[fmt(row[key], 3) for key in keys]]
            for row in frame.to_dict("records") if any(math.isfinite(row[key]) for key in keys)]
    return markdown_table(["Model", "Slices scored", *[titles[key] for key in keys]], rows)


# -- the figure -------------------------------------------------------------------------------------
def common_slice(predictions: dict[str, "object"], manifest) -> dict | None:
    """The tampered test slice with a position that every run predicted; the one the models score highest
    on average (ties: scan id, slice), as a manifest row dict; None when there is none."""
    import pandas as pd

    keys = ["scan_id", "slice", "label_type"]
    merged = None
    for number, frame in enumerate(predictions.values()):
        part = frame.loc[frame["label"] == 1, keys + ["score"]].rename(columns={"score": f"score{number}"})
        merged = part if merged is None else merged.merge(part, on=keys)
    if merged is None or merged.empty:
        return None
    rows = manifest[manifest["split"] == "test"].copy()
    rows["scan_id"] = rows["scan_id"].astype(str)
    merged["scan_id"] = merged["scan_id"].astype(str)
    truth = loc.truth_from_manifest(rows.reset_index(drop=True), 512)
    rows = rows.reset_index(drop=True)[truth.scored]
    found = merged.merge(rows, on=keys)
    if found.empty:
        return None
    found["mean_score"] = found[[c for c in found.columns if c.startswith("score")]].mean(axis=1)
    found = found.sort_values(["mean_score", "scan_id", "slice"], ascending=[False, True, True], kind="stable")
    return pd.Series(found.iloc[0]).to_dict()


def _panel(axes, image: np.ndarray, heat: np.ndarray, window, truth: loc.Truth, title: str) -> None:
    from matplotlib.patches import Circle

    from medfake.io.transforms import window_uint8

    axes.imshow(window_uint8(image, *window), cmap="gray", vmin=0, vmax=255)
    if float(heat.max()) > 0:
        axes.imshow(heat / float(heat.max()), cmap="jet", alpha=0.4, vmin=0, vmax=1)
    axes.add_patch(Circle(tuple(truth.xy[0]), float(truth.radius[0]), fill=False, color="lime", linewidth=1.5))
    peak = loc.peaks(heat[None])[0]
    if np.all(np.isfinite(peak)):
        axes.plot(*peak, marker="x", color="white", markersize=8, markeredgewidth=2)
    axes.set_title(title, fontsize=8)
    axes.set_axis_off()


def overlay_figure(entries: list[tuple[str, str]], predictions: dict[str, object], dataset, window,
                   path: Path) -> tuple[Path | None, str]:
    """One Grad-CAM overlay per model (``entries``: (model, run id)) on the common slice; (file, caption note)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from medfake.inference import explain
    from medfake.io.transforms import resize
    from medfake.models import saliency

    row = common_slice(predictions, dataset.manifest)
    if row is None:
        return None, "no tampered test slice with a position is common to the runs' predictions"
    hu = np.asarray(dataset.images[int(row["row"])], np.float32)
    panels = []
    for model, run_id in entries:
        try:
            detector = explain.load_detector(f"runs:/{run_id}/model")
        except (UserError, OSError):  # the baseline, a run without a Keras model: left out
            continue
        size = detector.size
        image = resize(hu, size) if hu.shape[-1] != size else hu
        frame = dataset.manifest.iloc[[int(row["row"])]].reset_index(drop=True)
        truth = loc.truth_from_manifest(frame, size, hu.shape[-1])
        heat, score = saliency.grad_cam_scores(detector.keras_model, image[None, ..., None])
        hit = bool(loc.pointing_game(heat, truth.xy, truth.radius)[0])
        panels.append((image, heat[0], truth, f"{model} · P(fake) {score[0]:.3f} · {'hit' if hit else 'miss'}"))
    if not panels:
        return None, "no run's logged model could be loaded"
    figure = Figure(figsize=(2.6 * len(panels), 2.9))
    FigureCanvasAgg(figure)
    for axes, (image, heat, truth, title) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        _panel(axes, image, heat, window, truth, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    note = (f"{row['label_type']} slice {int(row['slice'])} of scan {str(row['scan_id'])[:10]} (test split), "
            f"the positioned tampered slice the models score highest on average; circle = tamper (radius r), "
            f"× = the map's peak")
    return path, note


def section(frame, selection, figures: Path, scratch: Path, params: dict,
            download: Callable[[str, str, Path], Path | None]) -> str:
    """The report's localisation section (table + figure), or "" when no run logged localisation.

    ``params``: a screen run's config params (the dataset cache and CT window); ``download``: (run id,
    artifact, folder) → the file, or None where the run has none.
    """
    import pandas as pd

    from medfake.data.cache import load_dataset

    table = table_markdown(frame)
    if table is None:
        return ""
    lines = ["### Table 1, continued — where the detectors look (test set, issue 13)", "",
             "Pointing game: the saliency map's peak within r of the known tamper centre; chance = the disc's share of "
             "the image; energy = the map's positive mass within r; FM/FB = injected/removed tampers; randomisation ρ = "
             "Spearman correlation with the maps of the same architecture re-initialised (near 0 means the maps "
             "depend on the learned weights). Only tampered slices with a position are scored; occlusion and the "
             "randomisation check use the train step's seeded samples (their sizes are logged).", "", table]
    predictions = {}
    for entry in sorted(selection.ranked, key=lambda e: e.model):
        found = download(entry.run_id, "predictions/test.csv", scratch / f"loc_{entry.run_id}")
        if found is not None:
            predictions[entry.model] = pd.read_csv(found, dtype={"scan_id": str})
    note = "no run's test predictions were found"
    path = None
    if predictions:
        try:
            dataset = load_dataset(Path(params.get("data.cache_dir") or "") / selection.data_digest)
        except UserError:
            dataset = None
            note = f"dataset {selection.data_digest} is not in the local cache"
        if dataset is not None:
            window = (float(params.get("data.window.center", -600)), float(params.get("data.window.width", 1500)))
            entries = [(e.model, e.run_id) for e in sorted(selection.ranked, key=lambda e: e.model) if e.model in predictions]
            path, note = overlay_figure(entries, predictions, dataset, window, figures / FIGURE_NAME)
    if path is not None:
        caption = "Grad-CAM of each model on the same tampered test slice"
        lines += ["", f"![{caption}]({figures.name}/{path.name})", "", f"{caption}: {note}.", ""]
    else:
        lines += ["", f"No overlay figure: {note}.", ""]
    return "\n".join(lines)
