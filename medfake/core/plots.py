"""Figures of the study (Figs. 1, 3-7) and of a series scan, each written as one PNG.

Every function draws on its own ``matplotlib.figure.Figure`` with the Agg canvas — no pyplot,
so no GUI backend is chosen, no global figure list grows, and the caller's backend is left
alone. Each returns the path of the PNG it wrote. Class 1 = fake, 0 = real. The inputs are
numbers and pixel arrays only: nothing here can carry patient identifiers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

CLASS_NAMES = ("real", "fake")  # index = label
CLASS_COLOURS = ("tab:blue", "tab:orange")
DPI = 120


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png", bbox_inches="tight")
    figure.clear()
    return target


def _grey(image) -> np.ndarray:
    """A 2-D image from (H, W), (H, W, 1) or (H, W, 3) — the study repeats grey in 3 channels."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] in (1, 3):
        array = array.astype(np.float64).mean(axis=-1) if array.shape[-1] == 3 else array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D image (or H×W×1/3), got shape {np.asarray(image).shape}")
    return array


def _show_grey(axes, image) -> None:
    """Draw a slice in grey: uint8 on 0-255, floats in [0, 1] on 0-1, other floats min-max."""
    array = _grey(image)
    if np.issubdtype(np.asarray(image).dtype, np.integer) and array.min() >= 0 and array.max() <= 255:
        limits = (0, 255)
    elif array.min() >= 0.0 and array.max() <= 1.0:
        limits = (0.0, 1.0)
    else:
        limits = (float(array.min()), float(array.max()))
    axes.imshow(array, cmap="gray", vmin=limits[0], vmax=limits[1], interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])


def confusion_matrix_plot(tp, fp, tn, fn, path, title: str = "Confusion matrix") -> Path:
    """2×2 confusion matrix (study Fig. 7): rows true class, columns predicted, real then fake;
    each cell shows the count and its share of the true class."""
    counts = np.array([[tn, fp], [fn, tp]], dtype=np.int64)
    if (counts < 0).any():
        raise ValueError(f"confusion counts must be non-negative, got tp={tp} fp={fp} tn={tn} fn={fn}")
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)
    figure = _figure(4.2, 3.8)
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for row in range(2):
        for column in range(2):
            colour = "white" if shares[row, column] > 0.5 else "black"
            text = f"{counts[row, column]}\n{shares[row, column]:.1%}"
            axes.text(column, row, text, ha="center", va="center", color=colour, fontsize=12)
    axes.set_xticks([0, 1], labels=CLASS_NAMES)
    axes.set_yticks([0, 1], labels=CLASS_NAMES)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of true class")
    return _save(figure, path)


def roc_plot(curves: Mapping[str, tuple], path, title: str = "ROC curve") -> Path:
    """ROC curves of one or many models on one plot, AUC in the legend (Appendix B)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    if not curves:
        raise ValueError("roc_plot needs at least one (y_true, y_score) curve")
    figure = _figure(5.0, 5.0)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    for index, (name, (y_true, y_score)) in enumerate(curves.items()):
        false_positive_rate, true_positive_rate, _ = roc_curve(y_true, y_score)
        auc = roc_auc_score(y_true, y_score)
        # Ten colours, then the next line style: the study's 13 backbones + baseline stay distinct.
        axes.plot(false_positive_rate, true_positive_rate, linewidth=1.8, color=f"C{index % 10}",
                  linestyle=("-", "--", "-.", ":")[index // 10 % 4], label=f"{name} (AUC {auc:.4f})")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("false positive rate (fall-out)")
    axes.set_ylabel("true positive rate (recall)")
    axes.set_title(title)
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(alpha=0.3)
    return _save(figure, path)


def score_histogram(y_true, y_score, path, threshold: float = 0.5, title: str = "Scores by class") -> Path:
    """Histogram of fake-probabilities per true class with the decision threshold marked."""
    labels = np.asarray(y_true)
    scores = np.asarray(y_score, dtype=np.float64)
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in shape: {labels.shape} vs {scores.shape}")
    figure = _figure(6.0, 3.8)
    axes = figure.add_subplot()
    bins = np.linspace(0.0, 1.0, 41)
    for label, (name, colour) in enumerate(zip(CLASS_NAMES, CLASS_COLOURS)):
        chosen = scores[labels == label]
        axes.hist(chosen, bins=bins, alpha=0.6, color=colour, label=f"{name} (n={chosen.size})")
    axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:g}")
    axes.set_xlabel("predicted probability of fake")
    axes.set_ylabel("slices")
    axes.set_title(title)
    axes.legend()
    return _save(figure, path)


def embedding_map(points_2d, labels, predicted, path, title: str = "Penultimate-layer embedding") -> Path:
    """2-D map of embeddings (study Fig. 4) coloured by true class; misclassified points get
    a black ×, showing the study's "areas of collision". ``predicted`` may be None."""
    points = np.asarray(points_2d, dtype=np.float64)
    classes = np.asarray(labels)
    if points.ndim != 2 or points.shape[1] != 2 or classes.shape != (points.shape[0],):
        raise ValueError(f"need (n, 2) points and n labels, got {points.shape} and {classes.shape}")
    figure = _figure(5.5, 5.0)
    axes = figure.add_subplot()
    for label, (name, colour) in enumerate(zip(CLASS_NAMES, CLASS_COLOURS)):
        chosen = points[classes == label]
        axes.scatter(chosen[:, 0], chosen[:, 1], s=12, alpha=0.7, color=colour, label=name)
    if predicted is not None:
        wrong = np.asarray(predicted) != classes
        axes.scatter(
            points[wrong, 0], points[wrong, 1], marker="x", s=40, color="black",
            label=f"misclassified ({int(wrong.sum())})",
        )
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(title)
    axes.legend(loc="best", fontsize=8)
    return _save(figure, path)


def correlation_heatmap(matrix, path, title: str = "Pearson correlation between models") -> Path:
    """Annotated heatmap of a square correlation DataFrame (study Figs. 5, 6); build it with
    :func:`medfake.training.metrics.model_correlation`. The colour scale is fixed to [-1, 1]."""
    import pandas as pd

    frame = pd.DataFrame(matrix)
    if frame.shape[0] != frame.shape[1] or list(frame.index) != list(frame.columns):
        raise ValueError("correlation_heatmap needs a square matrix with equal row and column labels")
    values = frame.to_numpy(dtype=np.float64)
    size = max(4.0, 0.6 * len(frame) + 2.0)
    figure = _figure(size + 1.0, size)
    axes = figure.add_subplot()
    image = axes.imshow(values, cmap="coolwarm", vmin=-1.0, vmax=1.0)
    fontsize = 9 if len(frame) <= 8 else 7
    for row in range(values.shape[0]):
        for column in range(values.shape[1]):
            value = values[row, column]
            colour = "white" if abs(value) > 0.6 else "black"
            axes.text(column, row, f"{value:.2f}", ha="center", va="center", color=colour, fontsize=fontsize)
    names = [str(name) for name in frame.columns]
    axes.set_xticks(range(len(names)), labels=names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), labels=names)
    axes.set_title(title)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="Pearson r")
    return _save(figure, path)


def latency_bars(
    names: Sequence[str], means, stds, path, title: str = "Inference step time", unit: str = "ms"
) -> Path:
    """Mean ± std inference-step time per model as bars with error bars (study Fig. 3)."""
    means = np.asarray(means, dtype=np.float64)
    stds = np.asarray(stds, dtype=np.float64)
    if not len(names) == means.size == stds.size:
        raise ValueError(f"need one mean and std per name: {len(names)}, {means.size}, {stds.size}")
    figure = _figure(max(5.0, 0.55 * len(names) + 2.0), 4.2)
    axes = figure.add_subplot()
    axes.bar(range(len(names)), means, yerr=stds, capsize=4, color="tab:blue", alpha=0.8)
    axes.set_xticks(range(len(names)), labels=list(names), rotation=45, ha="right")
    axes.set_ylabel(f"time per inference step ({unit})")
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def montage(rows, col_labels: Sequence[str], row_labels: Sequence[str], path, title: str | None = None) -> Path:
    """Grid of slices (study Fig. 1): one row per scan, columns e.g. ``-5 … Original … +5``.

    Each entry is a 2-D image (uint8, or float) or None for a neighbour beyond the scan's end.
    """
    if len(rows) != len(row_labels) or any(len(row) != len(col_labels) for row in rows):
        raise ValueError("montage needs one row label per row and one column label per image in each row")
    columns = len(col_labels)
    figure = _figure(1.6 * columns + 0.6, 1.7 * len(rows) + (0.4 if title else 0.0))
    panels = figure.subplots(len(rows), columns, squeeze=False)
    for row_index, row in enumerate(rows):
        for column_index, image in enumerate(row):
            axes = panels[row_index][column_index]
            if image is None:
                axes.set_axis_off()
            else:
                _show_grey(axes, image)
            if row_index == 0:
                axes.set_title(str(col_labels[column_index]), fontsize=10)
            if column_index == 0:
                axes.set_ylabel(str(row_labels[row_index]), fontsize=10)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def score_profile(
    scores,
    flagged_ranges: Sequence[tuple[int, int]],
    path,
    threshold: float = 0.5,
    thumbnails: Mapping[int, np.ndarray] | None = None,
    title: str = "Fake probability along the series",
) -> Path:
    """Fake-probability per slice along z with the threshold and flagged slice ranges
    (inclusive ``(first, last)``) shaded; optional thumbnails (slice index → image) on top."""
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {values.shape}")
    shown = sorted((thumbnails or {}).items())[:10]
    figure = _figure(8.0, 5.2 if shown else 3.6)
    if shown:
        layout = figure.add_gridspec(2, len(shown), height_ratios=(1.0, 2.0))
        for index, (slice_index, image) in enumerate(shown):
            axes = figure.add_subplot(layout[0, index])
            _show_grey(axes, image)
            axes.set_title(f"slice {slice_index}", fontsize=8)
        axes = figure.add_subplot(layout[1, :])
    else:
        axes = figure.add_subplot()
    for number, (first, last) in enumerate(flagged_ranges):
        axes.axvspan(first - 0.5, last + 0.5, color="tab:red", alpha=0.2, label="flagged" if number == 0 else None)
    axes.plot(np.arange(values.size), values, color="tab:blue", linewidth=1.5, label="P(fake)")
    axes.axhline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    axes.set_xlim(-0.5, values.size - 0.5)
    axes.set_ylim(0.0, 1.02)
    axes.set_xlabel("slice index (z order)")
    axes.set_ylabel("probability of fake")
    axes.set_title(title)
    axes.legend(loc="upper right", fontsize=8)
    return _save(figure, path)


def grid(items: Sequence, path, titles: Sequence[str] | None = None, columns: int | None = None) -> Path:
    """Tile PNG files or image arrays (e.g. per-model confusion matrices, Fig. 7) in a grid."""
    import matplotlib.image

    if not items:
        raise ValueError("grid needs at least one image")
    if titles is not None and len(titles) != len(items):
        raise ValueError(f"got {len(titles)} titles for {len(items)} images")
    columns = columns or math.ceil(math.sqrt(len(items)))
    rows = math.ceil(len(items) / columns)
    figure = _figure(3.2 * columns, 3.2 * rows)
    panels = figure.subplots(rows, columns, squeeze=False)
    for index, axes in enumerate(panels.flat):
        axes.set_axis_off()
        if index >= len(items):
            continue
        item = items[index]
        image = matplotlib.image.imread(item) if isinstance(item, (str, Path)) else np.asarray(item)
        if image.ndim == 2:
            _show_grey(axes, image)
            axes.set_axis_off()
        else:
            axes.imshow(image)
        if titles is not None:
            axes.set_title(str(titles[index]), fontsize=10)
    return _save(figure, path)
