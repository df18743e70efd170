"""Every figure function writes a readable, non-empty PNG and rejects malformed input."""

from __future__ import annotations

import subprocess
import sys

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from medfake.training import metrics

from medfake.core import plots


def read_png(path) -> np.ndarray:
    assert path.is_file() and path.suffix == ".png" and path.stat().st_size > 1000
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0.01  # something was drawn, not a blank canvas
    return image


@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 80)
    scores = np.clip(rng.normal(0.3 + 0.4 * labels, 0.2), 0, 1)
    return labels, scores


def test_confusion_matrix_plot(tmp_path):
    path = plots.confusion_matrix_plot(tp=170, fp=6, tn=190, fn=7, path=tmp_path / "cm.png", title="DenseNet169")
    read_png(path)
    with pytest.raises(ValueError):
        plots.confusion_matrix_plot(-1, 0, 0, 0, tmp_path / "bad.png")


def test_confusion_matrix_plot_handles_an_empty_class(tmp_path):
    read_png(plots.confusion_matrix_plot(tp=0, fp=0, tn=5, fn=0, path=tmp_path / "cm.png"))


def test_roc_plot_one_and_many_models(tmp_path, scored):
    labels, scores = scored
    read_png(plots.roc_plot({"xception": (labels, scores)}, tmp_path / "one.png"))
    many = {"a": (labels, scores), "b": (labels, np.sqrt(scores)), "c": (labels, scores**2)}
    read_png(plots.roc_plot(many, tmp_path / "sub" / "many.png"))
    with pytest.raises(ValueError):
        plots.roc_plot({}, tmp_path / "none.png")


def test_score_histogram(tmp_path, scored):
    read_png(plots.score_histogram(*scored, tmp_path / "hist.png", threshold=0.4))
    with pytest.raises(ValueError):
        plots.score_histogram([0, 1], [0.5], tmp_path / "bad.png")


def test_embedding_map_marks_misclassified(tmp_path, scored):
    labels, scores = scored
    points = np.random.default_rng(1).normal(size=(labels.size, 2)) + labels[:, None] * 3
    predicted = metrics.predict_labels(scores)
    with_errors = read_png(plots.embedding_map(points, labels, predicted, tmp_path / "map.png", "xception"))
    without = read_png(plots.embedding_map(points, labels, None, tmp_path / "plain.png", "xception"))
    assert with_errors.shape != without.shape or not np.array_equal(with_errors, without)
    with pytest.raises(ValueError):
        plots.embedding_map(points[:, :1], labels, None, tmp_path / "bad.png")


def test_correlation_heatmap(tmp_path):
    table = pd.DataFrame(
        [
            [0.9786, 0.9669, 0.9887, 0.9694, 0.9777, 0.9985],
            [0.9732, 0.9883, 0.9548, 0.9898, 0.9713, 0.9982],
            [0.9598, 0.9451, 0.9718, 0.9490, 0.9583, 0.9975],
        ],
        index=["DenseNet169", "ResNet50V2", "MobileNetV3Large"],
        columns=metrics.STUDY_VECTOR,
    )
    read_png(plots.correlation_heatmap(metrics.model_correlation(table), tmp_path / "corr.png", "top models"))
    with pytest.raises(ValueError):
        plots.correlation_heatmap(table, tmp_path / "bad.png")


def test_latency_bars(tmp_path):
    names = ["ConvNeXtTiny", "DenseNet121", "MobileNetV3Large"]
    read_png(plots.latency_bars(names, [582.1, 334.9, 325.4], [18.6, 72.4, 44.7], tmp_path / "lat.png"))
    with pytest.raises(ValueError):
        plots.latency_bars(names, [1.0, 2.0], [0.1, 0.2], tmp_path / "bad.png")


def test_montage_of_slices_and_neighbours(tmp_path):
    rng = np.random.default_rng(2)
    as_uint8 = [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(3)]
    as_hu = [rng.normal(-500, 300, (32, 32)) for _ in range(3)]
    as_rgb = [np.repeat(rng.uniform(0, 1, (32, 32, 1)), 3, axis=-1) for _ in range(3)]
    as_rgb[0] = None  # neighbour beyond the end of the scan
    path = plots.montage(
        [as_uint8, as_hu, as_rgb], ["-1", "Original", "+1"], ["(a)", "(b)", "(c)"], tmp_path / "fig1.png", "Fig. 1"
    )
    read_png(path)
    with pytest.raises(ValueError):
        plots.montage([as_uint8], ["-1", "Original"], ["(a)"], tmp_path / "bad.png")
    with pytest.raises(ValueError):
        plots.montage([[np.zeros((2, 2, 2, 2))]], ["x"], ["(a)"], tmp_path / "bad.png")


def test_score_profile_with_and_without_thumbnails(tmp_path):
    scores = np.clip(np.sin(np.linspace(0, 6, 120)) * 0.5 + 0.5, 0, 1)
    read_png(plots.score_profile(scores, [(10, 30), (70, 75)], tmp_path / "plain.png", threshold=0.7))
    thumbnails = {20: np.zeros((16, 16)), 72: np.eye(16)}
    read_png(plots.score_profile(scores, [(10, 30)], tmp_path / "thumbs.png", 0.7, thumbnails=thumbnails))
    with pytest.raises(ValueError):
        plots.score_profile([], [], tmp_path / "bad.png")


def test_grid_tiles_files_and_arrays(tmp_path):
    first = plots.confusion_matrix_plot(5, 1, 6, 2, tmp_path / "a.png", "a")
    second = plots.confusion_matrix_plot(7, 0, 5, 1, tmp_path / "b.png", "b")
    read_png(plots.grid([first, second, np.eye(20)], tmp_path / "grid.png", titles=["a", "b", "eye"]))
    with pytest.raises(ValueError):
        plots.grid([], tmp_path / "bad.png")


def test_plotting_never_imports_pyplot(tmp_path):
    """Figures use the Agg canvas directly: no GUI backend is chosen, no figure stays open."""
    script = (
        "import sys, numpy as np\n"
        "from medfake.core import plots\n"
        f"plots.roc_plot({{'m': ([0, 1, 1, 0], [0.2, 0.8, 0.6, 0.4])}}, {str(tmp_path / 'roc.png')!r})\n"
        f"plots.montage([[np.eye(8)]], ['Original'], ['(a)'], {str(tmp_path / 'm.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    read_png(tmp_path / "roc.png")
