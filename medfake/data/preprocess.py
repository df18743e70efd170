"""The ``preprocess`` step: the study's balanced slice dataset (section 3.2), cached and logged.

Fakes are the FB/FM-labelled CT-GAN slices ± ``slice_radius`` (the study's rule, which also
takes in untampered neighbours: on the phantom the label noise is measured). Negatives are random
LIDC-IDRI slices (the study) or matched ones: untampered TB/TM-labelled slices ± radius of the same
CT-GAN scans, topped up from LIDC at matching relative z. Only the slices selected are decoded.
The output folder is named by the dataset digest and appears only when complete.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from medfake.core import tracking
from medfake.core.config import Config, add_config_arguments, config_from_args
from medfake.core.plots import montage
from medfake.data.build import SPLITS, Inputs, build, label_noise, resolve_inputs  # noqa: F401 - Inputs: importable from the step
from medfake.data.cache import Dataset, cache_path, dataset_digest, incomplete, load_dataset  # noqa: F401 - the step's API
from medfake.io.transforms import window_uint8


def montage_rows(dataset: Dataset, radius: int, max_rows: int = 3, window=(-600.0, 1500.0)):
    """Figure 1 of the study: a few labelled fake slices and their ±i neighbours."""
    m = dataset.manifest
    centres = m[(m["label"] == 1) & m["provenance"].str.endswith("offset +0")].head(max_rows)
    images = dataset.images
    rows, names = [], []
    for centre in centres.itertuples():
        same = m[(m["scan_id"] == centre.scan_id) & (m["source"] == "ctgan")].set_index("slice")
        row = []
        for offset in range(-radius, radius + 1):
            s = centre.slice + offset
            if s in same.index:
                row.append(window_uint8(np.asarray(images[int(np.atleast_1d(same.loc[s, "row"])[0])], np.float32), *window))
            else:
                row.append(np.zeros(images.shape[1:], np.uint8))
        rows.append(row)
        names.append(f"{centre.label_type} scan {centre.scan_id[:6]}")
    return rows, [f"{o:+d}" if o else "label" for o in range(-radius, radius + 1)], names


# -- MLflow -------------------------------------------------------------------------------
def finished_preprocess_run(cfg: Config, digest: str):
    return tracking.find_finished_run(cfg.experiment, stage="preprocess", tags={tracking.TAG_DATA_DIGEST: digest})


def preprocess(cfg: Config, progress: bool = True, detached: bool = False) -> tuple[Dataset, str]:
    """Build or reuse the dataset and make sure a FINISHED preprocess run describes it.

    With the same inputs and data config, the cache and the earlier run are reused (and said so);
    under ``mlflow run`` the launcher's run is always filled in.
    """
    import mlflow

    tracking.setup(cfg.experiment)
    inputs = resolve_inputs(cfg, progress)
    digest = dataset_digest(cfg, inputs)
    existing = finished_preprocess_run(cfg, digest)
    launcher = os.environ.get("MLFLOW_RUN_ID") and not detached
    if existing is not None and incomplete(cache_path(cfg, digest)) is None and not launcher:
        print(f"reusing dataset {digest} at {cache_path(cfg, digest)} (preprocess run {existing.info.run_id})", file=sys.stderr)
        return load_dataset(cfg, digest), existing.info.run_id
    with tracking.run(cfg.experiment, f"preprocess-{digest[:8]}", stage="preprocess", detached=detached) as active:
        mlflow.set_tags({tracking.TAG_DATA_DIGEST: digest, "medfake.data_source": cfg.data.source})
        tracking.log_config(cfg)
        dataset, reused, stats = build(cfg, progress, inputs=inputs, digest=digest)
        if reused:
            print(f"reusing cached dataset {digest} at {dataset.path}", file=sys.stderr)
        tracking.log_params({"data_digest": digest, "reused_cache": reused})
        _log_dataset(dataset)
        mlflow.log_metrics({f"count_{k}": v for k, v in dataset.info["counts"].items()})
        mlflow.log_metrics({"count_total": len(dataset.manifest), "problems": dataset.info["problems"]})
        if not reused:
            mlflow.log_metrics({"seconds": stats["seconds"], "slices_decoded": stats["decoded"],
                                "slices_per_s": stats["decoded"] / max(stats["seconds"], 1e-9)})
        mlflow.log_metrics(label_noise(dataset.manifest))
        for name in ("manifest.csv", "problems.txt", "dataset.json"):
            mlflow.log_artifact(str(dataset.path / name))
        window = (cfg.data.window.center, cfg.data.window.width)
        rows, cols, names = montage_rows(dataset, cfg.data.slice_radius, window=window)
        if rows:
            with tracking.artifact_tempdir() as tmp:
                mlflow.log_artifact(str(montage(rows, cols, names, Path(tmp) / "figure1_montage.png")), "plots")
        run_id = active.info.run_id
    return dataset, run_id


def _log_dataset(dataset: Dataset) -> None:
    import mlflow

    ds = mlflow.data.from_pandas(
        dataset.manifest, source=str(dataset.path.resolve()), name=f"medfake-{dataset.digest[:8]}", digest=dataset.digest,
        targets="label",
    )
    mlflow.log_input(ds, context="preprocess")


def ensure_dataset(cfg: Config, progress: bool = True, digest: str | None = None) -> tuple[Dataset, str | None]:
    """The dataset a step needs: a finished preprocess run's, else preprocess it first."""
    if digest:
        dataset = load_dataset(cfg, digest)
        run = finished_preprocess_run(cfg, digest)
        return dataset, run.info.run_id if run else None
    return preprocess(cfg, progress, detached=True)


# -- CLI ---------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    dataset, run_id = preprocess(cfg, progress=not args.quiet)
    c = dataset.info["counts"]
    print(f"dataset {dataset.digest}: {len(dataset.manifest)} slices at {dataset.info['image_size']}² in {dataset.path}")
    for split in SPLITS:
        print(f"  {split:<5}  fake {c[f'{split}_fake']:>5}  real {c[f'{split}_real']:>5}")
    print(f"MLflow run {run_id} (experiment '{cfg.experiment}'); see `mlflow ui`: {tracking.run_ui_url(run_id)}")
    return 0
