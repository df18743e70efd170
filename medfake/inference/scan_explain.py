"""``medfake scan --explain DIR``: where the detector looks on the peak slice of each suspicious range.

Grad-CAM (issue 13) when ``--model`` is a Keras detector: the Keras model is loaded beside the
scoring runtime (an ONNX/OpenVINO export has no gradients) and mapped at its last convolutional
block (the registry's layer; a plain model: its last feature map). With an ``.onnx``/``.xml`` file
or ``--endpoint`` there is no Keras model: occlusion through the scoring runtime's own predict.

The peak is given in the series' own pixels, ``(x, y)`` = (column, row) of the DICOM slice
(Columns (0028,0011) × Rows (0028,0010)), mapped back from the model's input with the geometry of
the resize that fed the model, so a reader can open the slice and look at the spot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medfake.core.errors import UserError
from medfake.inference.explain import _window_of
from medfake.inference.loading import Scorer, resolve_model
from medfake.training.localisation import peaks, to_input

METHOD_HELP = ("overlay of each suspicious range's peak slice (PNG) into DIR, its peak (x, y) in the slice's own "
               "pixels in the table and JSON; Grad-CAM from the Keras model of --model (loaded beside the scoring "
               "runtime), occlusion through the scoring runtime for an .onnx/.xml file or --endpoint")


@dataclass
class Explainer:
    """How the peak slices are mapped: ``method`` "cam" (a Keras model) or "occlusion" (any predict)."""

    method: str
    size: int | None                          # the model's input size (None: slices at their own size)
    window: tuple[float, float]               # the model's CT window (occlusion's fill), else the display window
    cam: Any = None                           # saliency.CamModel for "cam"
    predict: Callable[[np.ndarray], np.ndarray] | None = None


def _last_feature_map(model) -> str | None:
    """The last layer of a plain Keras model with a spatial (n, h, w, c) output, h·w > 1."""
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None)
        shape = getattr(shape, "shape", None)
        if shape is not None and len(shape) == 4 and (shape[1] or 0) * (shape[2] or 0) > 1:
            return layer.name
    return None


def _keras_model(kind: str, location: str):
    """The Keras model of a resolved ``--model`` (a .keras file or an MLflow model), None for another flavour."""
    from medfake.inference.loading import mlflow_model_info
    from medfake.models import runtime as rt

    if kind == "file":
        return rt.load_keras_file(Path(location))  # the scorer loaded the same file already: it loads
    if "keras" not in mlflow_model_info(location).flavors:
        return None
    import medfake.models.detector  # noqa: F401 - registers the detector's own layers for loading
    from medfake.core import logged_models

    return logged_models.load_keras(location)


def explainer_for(model_text: str, scorer: Scorer, endpoint: bool, window: tuple[float, float]) -> Explainer:
    """Grad-CAM when ``--model`` gives a Keras model with a feature map, else occlusion through ``scorer``."""
    from medfake.models import runtime as rt
    from medfake.models import saliency

    occlusion = Explainer("occlusion", scorer.input_size, window, predict=scorer.predict)
    if endpoint:
        return occlusion
    kind, location = resolve_model(model_text)
    if kind == "file" and Path(location).suffix.lower() != rt.RUNTIMES["keras"][1]:
        return occlusion
    model = _keras_model(kind, location)
    if model is None:  # the histogram baseline (pyfunc): no feature map, occlusion still works
        return occlusion
    try:
        split = saliency.cam_model(model)
    except UserError:  # a plain model (no registry backbone): its last feature map, if it has one
        layer = _last_feature_map(model)
        if layer is None:
            return occlusion
        split = saliency.cam_model(model, layer)
    return Explainer("cam", int(model.input_shape[1]), _window_of(model) or window, cam=split)


def _maps(explainer: Explainer, images: np.ndarray) -> np.ndarray:
    from medfake.models import saliency

    if explainer.method == "cam":
        return saliency.grad_cam(explainer.cam, images)
    return saliency.occlusion(explainer.predict, images, saliency.background_hu(explainer.window))


def _file_name(series: dict, r: dict) -> str:
    # the scan's own name (CT-GAN experiment/uuid) or the salted series id: never the folder (a patient ID)
    name = (series["scan"] or series["series_id"]).replace("/", "-")
    return f"{name}-range{r['first']}-{r['last']}-slice{r['peak_slice']}.png"


def explain_ranges(report: dict, opened: dict, explainer: Explainer, out: Path,
                   display: tuple[float, float]) -> list[Path]:
    """Map the peak slice of every range, set each range's ``peak_xy`` and write one overlay PNG per range."""
    from medfake.io.transforms import resize

    if out.exists() and not out.is_dir():
        raise UserError(f"--explain {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for s in report["series"]:
        series, indices = opened.get(s["series_id"], (None, None))
        if series is None or not s["ranges"]:
            continue
        position = {row["slice"]: k for k, row in enumerate(s["scores"])}
        hu = series.read_hu([indices[position[r["peak_slice"]]] for r in s["ranges"]]).astype(np.float32)
        rows, columns = hu.shape[-2:]
        size = explainer.size or rows
        x = resize(hu, size) if (rows, columns) != (size, size) else hu
        maps = _maps(explainer, x[..., None])
        for r, image, heat, peak in zip(s["ranges"], hu, maps, peaks(maps)):
            if np.all(np.isfinite(peak)):
                r["peak_xy"] = [round(float(to_input(peak[0], size, columns)), 1),
                                round(float(to_input(peak[1], size, rows)), 1)]
            path = out / _file_name(s, r)
            _overlay(path, image, heat, r, explainer.method, display)
            written.append(path)
    return written


def _overlay(path: Path, image: np.ndarray, heat: np.ndarray, r: dict, method: str, window) -> None:
    """The slice in its own pixels and the display window, the map stretched over it, the peak marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from medfake.io.transforms import window_uint8

    rows, columns = image.shape
    figure = Figure(figsize=(4.0, 4.2))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.imshow(window_uint8(image, *window), cmap="gray", vmin=0, vmax=255)
    top = float(np.max(heat)) if heat.size else 0.0
    if top > 0:  # map pixel centres land on the slice's: both grids span the same field of view
        axes.imshow(heat / top, cmap="jet", alpha=0.4, vmin=0, vmax=1, extent=(-0.5, columns - 0.5, rows - 0.5, -0.5))
    if r.get("peak_xy"):
        axes.plot(*r["peak_xy"], marker="x", color="white", markersize=9, markeredgewidth=2)
    where = f" · peak (x {r['peak_xy'][0]:.0f}, y {r['peak_xy'][1]:.0f})" if r.get("peak_xy") else ""
    axes.set_title(f"slice {r['peak_slice']} · P(fake) {r['peak_score']:.3f} · {method}{where}", fontsize=8)
    axes.set_axis_off()
    figure.savefig(path, dpi=100, bbox_inches="tight")
