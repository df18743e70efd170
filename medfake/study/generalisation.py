"""The generalisation table: per model, in-distribution vs cross-experiment AUC and the drop (issue 12, item 6).

In-distribution is the train run's own ``test_auc`` (the test split of the data it was trained on)
with its bootstrap CI. Cross-experiment is the newest FINISHED ``evaluate`` run of that train run
(tag ``medfake.source_run``) on data of another digest — for example ``medfake evaluate --model RUN
--data exp1-to-exp2`` — read as ``{split}_auc`` of the split it scored, with its CI. The drop is
in − cross. The two intervals come from different test sets, so no interval is given for the drop.
Evaluate runs are looked up in every experiment: they live in their target config's experiment.
A pure function of the store, like the rest of the report: rows sorted, nothing written to it.

``paper`` fills the table when config key ``study.generalise_to`` names a data config: after
select, each kept model's screen run is evaluated on that config's test split, exactly as
``medfake evaluate --model RUN --data <generalise_to> --set <paper's --set>`` would (a finished
evaluate run of the same run and target config is reused).
"""

from __future__ import annotations

import math
from pathlib import Path

from medfake.core import tracking
from medfake.core.config import Config, load_config, split_overrides
from medfake.core.contract import (
    CI_HIGH_SUFFIX,
    CI_LOW_SUFFIX,
    STAGE_EVALUATE,
    TAG_CONFIG_DIGEST,
    TAG_DATA_DIGEST,
    TAG_SOURCE_RUN,
    TAG_STAGE,
    TAG_TARGET_DATA_DIGEST,
    metric_key,
)
from medfake.core.errors import UserError
from medfake.inference.evaluate import evaluate

TABLE_FILE = "generalisation.csv"
IN_SPLIT = "test"  # the train step's held-out split


def evaluate_runs(source_ids: set[str]) -> dict[str, list]:
    """Source run id → its FINISHED evaluate runs on other data (target digest ≠ source digest), newest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment_ids = [exp.experiment_id for exp in client.search_experiments()]
    if not experiment_ids or not source_ids:
        return {}
    runs = client.search_runs(
        experiment_ids,
        filter_string=f"attributes.status = 'FINISHED' and tags.`{TAG_STAGE}` = '{STAGE_EVALUATE}'",
        order_by=["attributes.start_time DESC"],
        max_results=5000,
    )
    found: dict[str, list] = {}
    for run in runs:
        source = run.data.tags.get(TAG_SOURCE_RUN, "")
        if source in source_ids:
            found.setdefault(source, []).append(run)
    return found


def _interval(metrics: dict, key: str) -> tuple[float, float, float]:
    get = metrics.get
    return (get(key, math.nan), get(key + CI_LOW_SUFFIX, math.nan), get(key + CI_HIGH_SUFFIX, math.nan))


def generalisation_frame(sources: list[tuple[str, object]]):
    """One row per (model, target data digest) that has an evaluate run; ``sources`` = (model, train run)."""
    import pandas as pd

    by_id = {run.info.run_id: (model, run) for model, run in sources}
    evaluated = evaluate_runs(set(by_id))
    rows = []
    for source_id, runs in evaluated.items():
        model, source = by_id[source_id]
        source_digest = source.data.tags.get(TAG_DATA_DIGEST, "")
        in_auc, in_low, in_high = _interval(source.data.metrics, metric_key(IN_SPLIT, "auc"))
        newest_per_target: dict[str, object] = {}
        for run in runs:  # newest first
            target = run.data.tags.get(TAG_TARGET_DATA_DIGEST) or run.data.tags.get(TAG_DATA_DIGEST, "")
            if target and target != source_digest:
                newest_per_target.setdefault(target, run)
        for target, run in newest_per_target.items():
            split = run.data.params.get("split", IN_SPLIT)
            cross_auc, cross_low, cross_high = _interval(run.data.metrics, metric_key(split, "auc"))
            rows.append({
                "model": model, "run_id": source_id, "data_digest": source_digest,
                "auc_in": in_auc, "auc_in_ci_low": in_low, "auc_in_ci_high": in_high,
                "evaluate_run_id": run.info.run_id, "target_config": run.data.params.get("data", ""),
                "target_data_digest": target, "target_split": split,
                "auc_cross": cross_auc, "auc_cross_ci_low": cross_low, "auc_cross_ci_high": cross_high,
                "drop": in_auc - cross_auc,
            })
    columns = ["model", "run_id", "data_digest", "auc_in", "auc_in_ci_low", "auc_in_ci_high", "evaluate_run_id",
               "target_config", "target_data_digest", "target_split", "auc_cross", "auc_cross_ci_low",
               "auc_cross_ci_high", "drop"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["model", "target_config", "target_data_digest"], ignore_index=True)


def _fmt(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "—"


def _with_ci(value: float, low: float, high: float) -> str:
    interval = f" [{_fmt(low)}, {_fmt(high)}]" if math.isfinite(low) and math.isfinite(high) else ""
    return _fmt(value) + interval


def generalisation_markdown(frame) -> str:
    headers = ["Model", "In-distribution AUC (test)", "Target", "Cross-experiment AUC", "Drop"]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    for row in frame.to_dict("records"):
        target = f"{row['target_config'] or 'data'} `{row['target_data_digest'][:8]}` ({row['target_split']})"
        drop = row["drop"]
        drop_text = (f"{drop:+.3f}" if math.isfinite(drop) else "—")
        cells = [row["model"], _with_ci(row["auc_in"], row["auc_in_ci_low"], row["auc_in_ci_high"]), target,
                 _with_ci(row["auc_cross"], row["auc_cross_ci_low"], row["auc_cross_ci_high"]), drop_text]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_section(sources: list[tuple[str, object]], tables: Path) -> str:
    """Write ``tables/generalisation.csv`` and return the README section; "" when no model was evaluated elsewhere."""
    frame = generalisation_frame(sources)
    if frame.empty:
        return ""
    frame.to_csv(Path(tables) / TABLE_FILE, index=False)
    return "\n".join([
        "## Generalisation — in-distribution vs cross-experiment AUC", "",
        "Not in the study. In-distribution: each model's train run on its own test split (95 % bootstrap CI). "
        "Cross-experiment: the newest `medfake evaluate` run of that same detector on data of another digest "
        "(e.g. config `exp1-to-exp2`: experiment-2 scans), no retraining. Drop = in − cross; the two intervals "
        "come from different test sets, so the drop has none.", "",
        generalisation_markdown(frame),
    ])


# -- paper's step -----------------------------------------------------------------------------------
def target_config(cfg: Config, overrides: str) -> Config | None:
    """The data config ``study.generalise_to`` names, with paper's ``--set`` overrides; None when unset.

    Checked before any work: a target whose slices differ in size from the study's could not be scored.
    """
    target_ref = cfg.study.generalise_to
    if not target_ref:
        return None
    target = load_config(target_ref, split_overrides([overrides]) if overrides else [])
    if target.data.image_size != cfg.data.image_size:
        raise UserError(f"study.generalise_to {target_ref}: its data.image_size {target.data.image_size} differs from "
                        f"the study's {cfg.data.image_size}; the detectors could not score it")
    return target


def _finished_evaluate(target: Config, source_run: str):
    return tracking.find_finished_run(target.experiment, stage=STAGE_EVALUATE, params={"split": IN_SPLIT},
                                      tags={TAG_SOURCE_RUN: source_run, TAG_CONFIG_DIGEST: target.digest()})


def generalise(cfg: Config, overrides: str, kept: list, say, quiet: bool = False) -> dict[str, str]:
    """Evaluate each kept model's run (``kept``: entries with ``model``, ``run_id``) on the target config.

    Returns source run id → evaluate run id; nothing when ``study.generalise_to`` is unset.
    """
    target = target_config(cfg, overrides)
    if target is None:
        return {}
    done = {}
    for entry in kept:
        previous = _finished_evaluate(target, entry.run_id)
        if previous is not None:
            done[entry.run_id] = previous.info.run_id
            say(f"generalise: {entry.model} on {cfg.study.generalise_to}: reusing evaluate run {previous.info.run_id}")
            continue
        say(f"generalise: {entry.model} on {cfg.study.generalise_to} ({IN_SPLIT} split)")
        done[entry.run_id] = evaluate(entry.run_id, target, cfg.study.generalise_to, IN_SPLIT, progress=not quiet,
                                      nested=True)
    tracking.setup(cfg.experiment)  # evaluate pointed MLflow at the target's experiment
    return done
