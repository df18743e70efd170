"""Tiny DICOM trees in the CT-GAN and LIDC layouts for the dataset-rule tests (study section 3.2).

The rules only look at file numbers, positions and label rows, so the slices are 8² zeros.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from dicom_factory import write_series
from medfake.core.config import load_config
from medfake.data import build as dataset_rules

SIZE = 8  # pixels: the rules never look at them
FOLDERS = {"EXP1": "EXP1_blind", "EXP2": "EXP2_open"}


def ctgan_tree(root: Path, scans: dict[str, int], labels: list[tuple], experiment: str = "EXP1") -> Path:
    """CT-GAN layout: CT_Scans/EXP1_blind/<uuid>/<n>.dcm and labels_exp1.csv (type,uuid,slice,x,y).

    A label is (type, uuid, slice) or (type, uuid, slice, x, y); x and y default to 4. Scans of
    equal length are copies of one written series (each scan is opened on its own). Call again
    with ``experiment="EXP2"`` on the same root for experiment 2.
    """
    templates: dict[int, Path] = {}
    for uuid, length in scans.items():
        folder = root / "CT_Scans" / FOLDERS[experiment] / uuid
        if length not in templates:
            write_series(folder, np.zeros((length, SIZE, SIZE), np.int16))
            templates[length] = folder
        else:
            shutil.copytree(templates[length], folder)
    rows = ["type,uuid,slice,x,y"] + [",".join(map(str, (*label, 4, 4)[:5])) for label in labels]
    (root / f"labels_exp{experiment[-1]}.csv").write_text("\n".join(rows) + "\n")
    return root


def lidc_tree(root: Path, series: int, slices: int) -> Path:
    for k in range(series):
        write_series(root / f"LIDC-IDRI-{k:04d}" / "study" / "series", np.zeros((slices, SIZE, SIZE), np.int16))
    return root


def config(ctgan: Path, lidc: Path | None, *extra: str):
    """The paper config on these trees; ``lidc=None`` leaves data.lidc_root unset."""
    roots = [f"data.ctgan_root={ctgan}"] + ([f"data.lidc_root={lidc}"] if lidc is not None else [])
    return load_config("paper", ["data.source=real", *roots, "data.image_size=32", *extra])


def select(cfg, ctgan: Path, lidc: Path | None, truth_dir: Path | None = None):
    """(series, candidates, problems) exactly as the preprocess step selects them."""
    inputs = dataset_rules.Inputs(ctgan, lidc, truth_dir=truth_dir)
    series, candidates = dataset_rules.select_slices(cfg, inputs, progress=False)
    return series, candidates, inputs.problems
