"""The ``promote`` step: register the best run's detector and move the ``champion`` alias by a stated rule.

Rule (DESIGN §5, registered model ``medfake-detector``, aliases only — registry stages are
deprecated):

1. Candidates are the FINISHED runs of the experiment that logged a model (artifact ``model``)
   and the metric (``--metric``, default ``val_h``: validation, not test, as DESIGN §2 ranks).
2. Runs are grouped by model, setup (the resolved config without the seed) and data digest;
   a group's score is the mean of the metric over its runs (repeats, study Table 2), with the
   spread shown. The best group's best single run is the one registered.
3. Its model becomes a new version of ``medfake-detector`` (tagged with run id, model, data
   digest and metrics) — or the existing version of that run is reused, so promoting twice
   with nothing new registers nothing new — and gets the alias ``challenger``.
4. ``champion`` moves to it only when its group mean is above the floor (``--min-score``; by
   default chance, 0.5, for the study's six metrics and H: a detector no better than a coin must
   not guard a PACS, even as the first candidate) and there is no champion yet, or the
   challenger's group mean beats the champion's by at least ``--min-delta`` on the same data
   digest; otherwise the reason is printed and ``champion`` stays.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from medfake.core import tracking
from medfake.core.config import add_config_arguments, config_from_args
from medfake.core.contract import CHALLENGER_ALIAS, CHAMPION_ALIAS, REGISTERED_MODEL, TAG_MODEL, TAG_PREFIX
from medfake.core.errors import UserError

CHAMPION = CHAMPION_ALIAS
CHALLENGER = CHALLENGER_ALIAS
MODEL_ARTIFACT = "model"
DEFAULT_METRIC = "val_h"
# Metrics where lower is better (everything else: higher is better).
LOWER_IS_BETTER = ("_loss", "_ece", "latency_ms_mean", "latency_ms_std", "_seconds")
# Params that differ between runs of the same setup (not part of the group key).
RUN_SPECIFIC_PARAMS = frozenset({"seed", "weights_used", "precision_used", "jit_compile_used", "phase2_lr_used"})
# Metrics in [0, 1] where a coin scores 0.5 (study section 4.3's six and their harmonic mean H):
# the default floor a champion must beat.
CHANCE_METRICS = ("_h", "_auc", "_accuracy", "_precision", "_recall", "_specificity", "_f1")
CHANCE = 0.5
VERSION_METRICS = ("val_h", "val_auc", "val_accuracy", "val_f1", "val_specificity", "test_h", "test_auc",
                   "test_accuracy", "test_f1", "test_specificity", "params_m", "latency_ms_mean")


@dataclass
class Candidate:
    """One finished run with a logged model and the ranking metric."""

    run_id: str
    model: str
    seed: str
    stage: str
    data_digest: str
    setup_digest: str
    value: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Group:
    """Runs of one model, setup and data digest; scored by the mean of the metric (repeats)."""

    model: str
    setup_digest: str
    data_digest: str
    runs: list[Candidate]
    direction: int

    @property
    def values(self) -> np.ndarray:
        return np.array([c.value for c in self.runs], dtype=np.float64)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.runs) > 1 else 0.0

    @property
    def best(self) -> Candidate:
        return max(self.runs, key=lambda c: (self.direction * c.value, c.run_id))


@dataclass
class Decision:
    """What promote found and did (or would do with ``--dry-run``)."""

    metric: str
    direction: int
    groups: list[Group]
    chosen: Candidate
    version: str | None            # the challenger's version (None: would be registered, dry run)
    registered_new: bool
    champion_before: str | None
    champion_after: str | None
    moved: bool
    reason: str
    dry_run: bool
    notes: list[str] = field(default_factory=list)


def metric_direction(metric: str) -> int:
    """+1 when higher is better, -1 for losses, calibration error, latency and seconds."""
    return -1 if any(metric.endswith(s) or s.strip("_") == metric for s in LOWER_IS_BETTER) else 1


def default_floor(metric: str) -> float | None:
    """Chance (0.5) for the six metrics and H of any split, e.g. ``val_h``; no floor for the others."""
    return CHANCE if metric_direction(metric) > 0 and metric.endswith(CHANCE_METRICS) else None


def above_floor(score: float, floor: float | None, direction: int, metric: str) -> tuple[bool, str]:
    """Whether a group mean clears the floor a champion must beat, and why not (one line)."""
    if floor is None:
        return True, ""
    if math.isfinite(score) and direction * (score - floor) > 0:
        return True, ""
    side = "above" if direction > 0 else "below"
    chance = " (chance)" if floor == CHANCE else ""
    return False, (f"{metric} {score:.4f} is not {side} the floor {floor:g}{chance} set by --min-score: "
                   f"a detector no better than that does not become champion")


def setup_digest(params: dict[str, str]) -> str:
    """Digest of a run's resolved config without the seed (runs that differ only by seed are repeats)."""
    kept = {k: v for k, v in params.items() if k not in RUN_SPECIFIC_PARAMS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]


def group_candidates(candidates: list[Candidate], direction: int) -> list[Group]:
    """Groups by (model, setup digest, data digest), best mean first (ties: more runs, then best run)."""
    by_key: dict[tuple[str, str, str], list[Candidate]] = {}
    for c in candidates:
        by_key.setdefault((c.model, c.setup_digest, c.data_digest), []).append(c)
    groups = [Group(m, s, d, runs, direction) for (m, s, d), runs in by_key.items()]
    return sorted(groups, key=lambda g: (-direction * g.mean, -len(g.runs), -direction * g.best.value, g.best.run_id))


def compare(challenger: float, champion: float | None, same_data: bool, min_delta: float, direction: int,
            metric: str) -> tuple[bool, str]:
    """Whether the challenger's score beats the champion's by at least ``min_delta``, and why (one line)."""
    if champion is None or not math.isfinite(champion):
        return False, f"the champion has no {metric} to compare with"
    if not same_data:
        return False, "the champion was evaluated on another data digest, so the metrics are not comparable"
    gain = direction * (challenger - champion)
    if gain > 0 and gain >= min_delta:
        return True, f"{metric} {challenger:.4f} beats the champion's {champion:.4f} by {gain:.4f} ≥ min-delta {min_delta:g}"
    if gain <= 0:
        return False, f"{metric} {challenger:.4f} does not beat the champion's {champion:.4f}"
    return False, f"{metric} {challenger:.4f} beats the champion's {champion:.4f} by only {gain:.4f} < min-delta {min_delta:g}"


# -- reading the tracking store ------------------------------------------------------------
def _runs_with_models(client, experiment_id: str) -> set[str]:
    """Run ids that logged a model named ``model`` (MLflow 3 logged models)."""
    found: set[str] = set()
    token = None
    while True:
        page = client.search_logged_models(experiment_ids=[experiment_id], max_results=1000, page_token=token)
        found.update(m.source_run_id for m in page if m.name == MODEL_ARTIFACT and m.source_run_id)
        token = page.token
        if not token:
            return found


def collect_candidates(client, experiment: str, metric: str, model_filter: str | None = None) -> tuple[list[Candidate], list[str]]:
    """Finished runs of ``experiment`` with a logged model and ``metric``; notes on what was left out."""

    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"MLflow experiment '{experiment}' does not exist in {tracking_uri()}; train a model first")
    runs = tracking.finished_runs(experiment)
    with_models = _runs_with_models(client, exp.experiment_id)
    candidates: list[Candidate] = []
    no_model = no_metric = 0
    for run in runs:
        params = tracking.params_of(run)
        model = params.get("model") or run.data.tags.get(TAG_MODEL) or ""
        if model_filter and model.lower() != model_filter.lower():
            continue
        if run.info.run_id not in with_models:
            no_model += 1
            continue
        value = run.data.metrics.get(metric)
        if value is None or not math.isfinite(value):
            no_metric += 1
            continue
        candidates.append(Candidate(
            run_id=run.info.run_id,
            model=model or "?",
            seed=params.get("seed", "?"),
            stage=run.data.tags.get(tracking.TAG_STAGE, ""),
            data_digest=run.data.tags.get(tracking.TAG_DATA_DIGEST) or params.get("data_digest", ""),
            setup_digest=setup_digest(params),
            value=float(value),
            metrics={k: float(v) for k, v in run.data.metrics.items() if k in VERSION_METRICS or k == metric},
        ))
    notes = []
    if no_model:
        notes.append(f"{no_model} finished runs have no logged model and were left out")
    if no_metric:
        notes.append(f"{no_metric} runs with a model have no metric {metric} and were left out")
    return candidates, notes


def tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def _use_tracking_store() -> None:
    """Point MLflow at the store (``MLFLOW_TRACKING_URI`` or ./mlflow.db) without creating an experiment."""
    import mlflow

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or tracking.DEFAULT_TRACKING_URI)


def version_of_run(client, name: str, run_id: str):
    """The latest registered version of ``name`` made from ``run_id``, or None."""
    versions = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    return max(versions, key=lambda v: int(v.version)) if versions else None


def champion_version(client, name: str):
    """The version holding ``champion``, or None when there is none (or no registered model yet)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        return None
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _version_score(client, version, metric: str, groups: list[Group]) -> tuple[float | None, str]:
    """(score, data digest) of a registered version: its group's mean when its run is among the
    candidates (the same rule as the challenger), else what was recorded at registration, else the
    run's own metric."""
    for group in groups:
        if any(c.run_id == version.run_id for c in group.runs):
            return group.mean, group.data_digest
    tags = version.tags or {}
    digest = tags.get(f"{TAG_PREFIX}data_digest", "")
    if tags.get(f"{TAG_PREFIX}metric") == metric and f"{TAG_PREFIX}metric_mean" in tags:
        return float(tags[f"{TAG_PREFIX}metric_mean"]), digest
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(version.run_id) if version.run_id else None
    except MlflowException:
        run = None
    if run is None:
        return None, digest

    digest = digest or run.data.tags.get(tracking.TAG_DATA_DIGEST, "")
    return run.data.metrics.get(metric), digest


def _version_tags(chosen: Candidate, group: Group, metric: str) -> dict[str, str]:
    tags = {
        f"{TAG_PREFIX}run_id": chosen.run_id,
        f"{TAG_PREFIX}model": chosen.model,
        f"{TAG_PREFIX}seed": chosen.seed,
        f"{TAG_PREFIX}data_digest": chosen.data_digest,
        f"{TAG_PREFIX}setup_digest": chosen.setup_digest,
        f"{TAG_PREFIX}metric": metric,
        f"{TAG_PREFIX}metric_mean": f"{group.mean:.6g}",
        f"{TAG_PREFIX}metric_std": f"{group.std:.6g}",
        f"{TAG_PREFIX}group_runs": str(len(group.runs)),
    }
    tags |= {k: f"{v:.6g}" for k, v in sorted(chosen.metrics.items())}
    return tags


def _register(chosen: Candidate, name: str, tags: dict[str, str]):
    import logging

    import mlflow

    logger = logging.getLogger("mlflow.tracking._model_registry.fluent")
    level = logger.level
    logger.setLevel(logging.ERROR)  # "registering model based on models:/m-… instead" is expected in MLflow 3
    try:
        return mlflow.register_model(f"runs:/{chosen.run_id}/{MODEL_ARTIFACT}", name, tags=tags)
    finally:
        logger.setLevel(level)


def _set_alias(client, name: str, alias: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, alias).version
    except MlflowException:
        current = None
    if str(current) != str(version):
        client.set_registered_model_alias(name, alias, str(version))


def promote(experiment: str, metric: str = DEFAULT_METRIC, min_delta: float = 0.0, name: str = REGISTERED_MODEL,
            dry_run: bool = False, model_filter: str | None = None, min_score: float | None = None,
            use_default_floor: bool = True) -> Decision:
    """Apply the rule of the module docstring; returns the decision (nothing changes with ``dry_run``).

    ``min_score`` is the floor a champion's group mean must beat; None takes :func:`default_floor`
    unless ``use_default_floor`` is False (no floor).
    """
    from mlflow.tracking import MlflowClient

    if not math.isfinite(min_delta) or min_delta < 0:
        raise UserError(f"--min-delta must be a number ≥ 0, got {min_delta}")
    if min_score is not None and not math.isfinite(min_score):
        raise UserError(f"--min-score must be a number, got {min_score}")
    floor = min_score if min_score is not None else (default_floor(metric) if use_default_floor else None)
    _use_tracking_store()
    client = MlflowClient()
    direction = metric_direction(metric)
    candidates, notes = collect_candidates(client, experiment, metric, model_filter)
    if not candidates:
        which = f" of model {model_filter}" if model_filter else ""
        extra = f" ({'; '.join(notes)})" if notes else ""
        raise UserError(f"no finished run{which} in experiment '{experiment}' has a logged model and metric {metric}{extra}")
    groups = group_candidates(candidates, direction)
    best_group = groups[0]
    chosen = best_group.best

    existing = version_of_run(client, name, chosen.run_id)
    registered_new = existing is None
    version = None if existing is None else str(existing.version)
    if registered_new and not dry_run:
        version = str(_register(chosen, name, _version_tags(chosen, best_group, metric)).version)
    if not dry_run:
        _set_alias(client, name, CHALLENGER, version)

    champion = champion_version(client, name)
    champion_before = None if champion is None else str(champion.version)
    clears, below = above_floor(best_group.mean, floor, direction, metric)
    if not clears:
        moved, reason = False, below
    elif champion is None:
        moved, reason = True, "there is no champion yet"
    elif version is not None and champion_before == version:
        moved, reason = False, f"version {version} (run {chosen.run_id}) is already the champion"
    else:
        champion_score, champion_digest = _version_score(client, champion, metric, groups)
        moved, reason = compare(best_group.mean, champion_score, champion_digest == best_group.data_digest,
                                min_delta, direction, metric)
    if moved and not dry_run:
        _set_alias(client, name, CHAMPION, version)
    champion_after = (version if moved else champion_before) if not dry_run else champion_before
    return Decision(metric, direction, groups, chosen, version, registered_new, champion_before, champion_after,
                    moved, reason, dry_run, notes)


# -- CLI ------------------------------------------------------------------------------------
def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on", ""):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _floor_argument(text: str) -> dict:
    """``--min-score``: empty = the default floor, 'none' = no floor, else a number."""
    value = str(text).strip().lower()
    if not value:
        return {}
    if value == "none":
        return {"use_default_floor": False}
    try:
        return {"min_score": float(value)}
    except ValueError:
        raise UserError(f"--min-score must be a number or 'none', got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:

    add_config_arguments(parser)
    parser.add_argument("--experiment", default="", help="MLflow experiment to pick from (default: the config's)")
    parser.add_argument("--metric", default=DEFAULT_METRIC,
                        help="ranking metric, e.g. val_h, val_auc, val_loss (losses: lower is better; default val_h)")
    parser.add_argument("--min-delta", type=float, default=0.0,
                        help="how much the challenger must beat the champion by to take the alias (default 0: any gain)")
    parser.add_argument("--min-score", default="",
                        help="floor the challenger's mean must beat to become champion (default: 0.5, chance, "
                             "for H and the six metrics; 'none': no floor)")
    parser.add_argument("--name", default=REGISTERED_MODEL, help=f"registered model name (default {REGISTERED_MODEL})")
    parser.add_argument("--model", default="", help="only consider runs of this backbone (registry name)")
    parser.add_argument("--dry-run", nargs="?", const=True, default=False, type=_bool, metavar="BOOL",
                        help="show the decision only; register nothing, move no alias")


def run(args: argparse.Namespace) -> int:
    experiment = args.experiment.strip()
    if not experiment:

        experiment = config_from_args(args).experiment
    decision = promote(experiment, metric=args.metric.strip(), min_delta=args.min_delta, name=args.name,
                       dry_run=args.dry_run, model_filter=args.model.strip() or None,
                       **_floor_argument(args.min_score))
    from medfake.registry.promote_output import format_decision

    print(format_decision(decision, args.name))
    return 0
