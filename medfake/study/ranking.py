"""Screen runs from the store and their ranking by H (study Table A1, eq. 4).

H is the harmonic mean of accuracy, F1 and specificity on the ranking split (``val`` by default;
``test`` reproduces the study, which chose on test metrics). The newest FINISHED screen run per
model of one data digest is ranked; the baseline is ranked (it is the floor) but never kept.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from medfake.core import tracking
from medfake.core.contract import (
    BASELINE,
    STAGE_SCREEN,
    TAG_CONFIG_DIGEST,
    TAG_DATA_DIGEST,
    TAG_MODEL,
    TAG_STAGE,
    metric_key,
)
from medfake.core.errors import UserError

RANK_SPLITS = ("val", "test")
H_INPUTS = ("accuracy", "f1", "specificity")


# -- reading the store ----------------------------------------------------------------------
def use_store() -> str:
    """Point MLflow at the store (env ``MLFLOW_TRACKING_URI`` or ./mlflow.db) without creating anything."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one progress line per event is ours
    uri = tracking.tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def search_runs(experiment: str, filter_string: str = "", finished: bool = True) -> list:
    """Runs of an existing experiment matching a filter, newest first; a one-line error if it does not exist."""
    from mlflow.tracking import MlflowClient

    use_store()
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise UserError(f"no MLflow experiment named '{experiment}' in the store "
                        f"(experiments: {', '.join(names) or 'none'})")
    clauses = (["attributes.status = 'FINISHED'"] if finished else []) + ([filter_string] if filter_string else [])
    runs, token = [], None
    while True:
        page = client.search_runs(
            [found.experiment_id], filter_string=" and ".join(clauses), max_results=1000,
            order_by=["attributes.start_time DESC", "attributes.run_id ASC"], page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def tag_filter(tags: dict[str, str]) -> str:
    """An MLflow filter matching every tag (name → value)."""
    return " and ".join(f"tags.`{name}` = '{value}'" for name, value in tags.items())


def model_of(run) -> str:
    """Registry spelling of the run's model (tag, else param)."""
    return run.data.tags.get(TAG_MODEL) or run.data.params.get("model", "")


def screen_runs(experiment: str, data_digest: str | None = None, run_ids: set[str] | None = None) -> tuple[str, list]:
    """(data digest, newest FINISHED screen run per model) — refusing a mix of data digests.

    ``run_ids`` limits the choice to those runs (a driver's own screens, a select run's ranking).
    """
    runs = search_runs(experiment, tag_filter({TAG_STAGE: STAGE_SCREEN}))
    if run_ids is not None:
        runs = [run for run in runs if run.info.run_id in run_ids]
    if not runs:
        raise UserError(
            f"experiment '{experiment}' has no FINISHED screen runs; train some first "
            "(`medfake train --model NAME` or `medfake paper`)"
        )
    by_digest: dict[str, list] = {}
    for run in runs:
        by_digest.setdefault(run.data.tags.get(TAG_DATA_DIGEST, ""), []).append(run)
    listing = ", ".join(f"{digest or '(none)'} ({len(found)} runs)" for digest, found in sorted(by_digest.items()))
    if data_digest:
        if data_digest not in by_digest:
            raise UserError(f"no FINISHED screen runs with data digest '{data_digest}' in '{experiment}' "
                            f"(found: {listing})")
        chosen = data_digest
    elif len(by_digest) > 1:
        raise UserError(f"screen runs of {len(by_digest)} data digests are mixed in '{experiment}': {listing}; "
                        "pick one with --data-digest")
    else:
        chosen = next(iter(by_digest))
    newest: dict[str, Any] = {}
    for run in by_digest[chosen]:  # newest first
        newest.setdefault(model_of(run), run)
    return chosen, [newest[name] for name in sorted(newest)]


def screen_config(run_id: str):
    """The resolved config a run logged (``config.yaml``), or None when the run has none."""
    import mlflow

    from medfake.core.config import load_config

    with tracking.artifact_tempdir() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.yaml", dst_path=tmp)
        except Exception:  # noqa: BLE001 - any missing or unreadable artifact means "no config"
            return None
        return load_config(path)


# -- ranking (Table A1) -----------------------------------------------------------------------
@dataclass
class Screened:
    """One screened model with its H on the ranking split."""

    model: str
    run_id: str
    run_name: str
    seed: int
    config_digest: str
    metrics: dict[str, float]
    h: float
    accuracy: float
    f1: float
    specificity: float
    rank: int = 0
    kept: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"model": self.model, "run_id": self.run_id, "h": self.h, "accuracy": self.accuracy, "f1": self.f1,
                "specificity": self.specificity, "rank": self.rank, "kept": self.kept}


@dataclass
class Selection:
    """The ranking of one experiment and data digest."""

    experiment: str
    data_digest: str
    rank_on: str
    top_k: int
    ranked: list[Screened]
    warnings: list[str] = field(default_factory=list)

    @property
    def kept(self) -> list[Screened]:
        return [entry for entry in self.ranked if entry.kept]

    def screen_runs_digest(self) -> str:
        """Which screen runs the ranking used (a select run whose inputs match can be reused)."""
        import hashlib

        text = ",".join(sorted(entry.run_id for entry in self.ranked))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def rank_models(runs: list, rank_on: str, top_k: int, experiment: str = "", data_digest: str = "") -> Selection:
    """Rank runs by H on ``rank_on`` (ties by name), keep the first ``top_k`` backbones.

    A run lacking one of the three metrics is skipped with a warning; the baseline is ranked but
    not kept. Fewer backbones than ``top_k`` keeps them all, with a warning.
    """
    from medfake.training.metrics import h_score

    if rank_on not in RANK_SPLITS:
        raise UserError(f"--rank-on must be one of {', '.join(RANK_SPLITS)}, got '{rank_on}'")
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    warnings: list[str] = []
    entries = []
    for run in runs:
        keys = [metric_key(rank_on, name) for name in H_INPUTS]
        values = [run.data.metrics.get(key, math.nan) for key in keys]
        missing = [key for key, value in zip(keys, values) if not math.isfinite(value)]
        name = model_of(run)
        if missing:
            warnings.append(f"skipping screen run {run.info.run_name} ({run.info.run_id}): "
                            f"missing metric {', '.join(missing)}")
            continue
        accuracy, f1, specificity = values
        try:
            seed = int(tracking.params_of(run).get("seed", "0"))
        except ValueError:
            warnings.append(f"skipping screen run {run.info.run_name} ({run.info.run_id}): "
                            "param seed is not an integer")
            continue
        entries.append(Screened(
            model=name, run_id=run.info.run_id, run_name=run.info.run_name or name, seed=seed,
            config_digest=run.data.tags.get(TAG_CONFIG_DIGEST, ""), metrics=dict(run.data.metrics),
            h=h_score(accuracy, f1, specificity), accuracy=accuracy, f1=f1, specificity=specificity,
        ))
    if not entries:
        raise UserError(f"no screen run in '{experiment}' has {', '.join(metric_key(rank_on, n) for n in H_INPUTS[:2])} "
                        f"and {metric_key(rank_on, H_INPUTS[2])}")
    entries.sort(key=lambda entry: (-entry.h, entry.model))
    backbones = 0
    for position, entry in enumerate(entries, start=1):
        entry.rank = position
        if entry.model != BASELINE and backbones < top_k:
            entry.kept = True
            backbones += 1
    if backbones < top_k:
        warnings.append(f"only {backbones} screened backbone(s), fewer than --top-k {top_k}: keeping all {backbones}")
    return Selection(experiment, data_digest, rank_on, top_k, entries, warnings)
