"""A tiny learnable dataset and train plan, shared by the train and tune tests."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from medfake.core.config import load_config
from medfake.data.preprocess import Dataset, load_dataset

TINY = [
    "data.image_size=32", "train.batch_size=8", "train.phase1_epochs=3", "train.phase2_epochs=1",
    "train.phase1_lr=1e-3", "train.phase2_lr=1e-4", "eval.bootstrap_samples=50", "eval.latency_steps=2",
    "model.weights=none", "model.head_units=[16, 8]", "train.precision=float32", "experiment=medfake-test",
    "eval.runtime_check=false",  # the export it needs costs 15-35 s a run; tests/inference/test_scan_runtimes.py turns it on
    # The quickstart re-measures BatchNorm statistics before each validation; a tiny detector trains
    # 3 steps, and exact statistics of its ≤ 24 training slices made it ill-conditioned off its data:
    # OpenVINO and Keras float32 then differed by 0.048 on the runtime tests' series, where they agree
    # within 1e-6 on the real quickstart detector (5.7e-7). The runtime and ensemble tests need a
    # well-conditioned tiny detector; recalibration is tested in tests/models/test_detector.py and
    # end to end in test_train_end_to_end_logs_the_contract.
    "train.bn_recalibration_batches=0",
    # The quickstart also keeps a moving average of its phase-2 weights; over a tiny detector's 3 steps that
    # average is mostly the first step's weights. Tested in tests/training/test_fitting.py and, on, end to end.
    "train.ema_momentum=0",
]


def tiny_dataset(folder, n=48, size=32, seed=0, phantom_like=False) -> Dataset:
    """A random int16 HU dataset with a learnable bright square in fakes, as preprocess writes it.

    ``phantom_like``: the manifest carries the phantom's truth (every fourth fake is a ±5-label
    neighbour that is not truly tampered and has no square), fakes are FM and FB, reals TB, TM and
    LIDC slices; otherwise every fake is FM, every real TB, and ``truly_tampered`` is empty.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.normal(-600, 150, size=(n, size, size)).astype(np.int16)
    truly = labels.copy()
    if phantom_like:
        truly[(labels == 1) & (np.arange(n) % 8 == 7)] = 0
    images[truly == 1, 8:16, 8:16] += 400
    split = np.array(["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4))
    folder.mkdir(parents=True)
    np.save(folder / "images.npy", images)
    label_type = np.where(labels == 1, "FM", "TB")
    source = np.full(n, "ctgan", dtype=object)
    truth = np.full(n, "", dtype=object)
    if phantom_like:
        kind = np.arange(n) // 2 % 3
        label_type = np.where(labels == 1, np.where(kind == 0, "FB", "FM"), np.array(["TB", "TM", "lidc_matched_z"])[kind])
        source = np.where(label_type == "lidc_matched_z", "lidc", "ctgan")
        truth = np.where(source == "lidc", "", truly.astype(str))
    manifest = pd.DataFrame({
        "row": np.arange(n), "scan_id": [f"s{i // 4:03d}" for i in range(n)], "source": source,
        "slice": np.arange(n), "position": np.arange(n), "label": labels, "split": split,
        "label_type": label_type, "provenance": "test", "relative_z": 0.5, "truly_tampered": truth,
    })
    manifest.to_csv(folder / "manifest.csv", index=False)
    (folder / "dataset.json").write_text(json.dumps({"digest": folder.name, "image_size": size, "counts": {}, "problems": 0}))
    return load_dataset(folder)


def tiny_plan(extra=(), model="MobileNetV3Large"):
    from medfake.training.train import resolve_plan

    return resolve_plan(model, load_config("quickstart", [*TINY, *extra]), "screen")


