"""The ``tune`` step: hyperparameter search with Optuna over the train step, tracked in MLflow.

The study fixed every hyperparameter (section 4) and names their effect as future work. Each trial
is a real train run (feature cache, both phases, the full evaluation) nested under the search's
parent run with tag ``medfake.stage=tune``; a pruner (median by default) stops trials whose
per-epoch validation metric falls behind. The study lives in Optuna storage — a journal file beside
the tracking store by default, any RDB URL for workers on several machines — so another
``medfake tune`` with the same ``--study`` joins it (parallel) or resumes it (after a stop).
The best trial becomes ``experiments/tuned-<model>.yaml``, an override file ``train`` takes as is.

The space is read by :mod:`~medfake.study.tune_space`, the storage and study opened by
:mod:`~medfake.study.tune_storage`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import shutil
import socket
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medfake.core import config as config_module
from medfake.core import device, tracking
from medfake.core.config import (
    add_config_arguments,
    load_config,
    parse_value,
    read_yaml,
    resolve_config_path,
    split_overrides,
)
from medfake.core.contract import (
    BASELINE,
    STAGE_TUNE,
    TAG_BEST_RUN,
    TAG_BEST_TRIAL,
    TAG_DATA_DIGEST,
    TAG_DEVICE,
    TAG_FAILURE,
    TAG_MODEL,
    TAG_PRUNED,
    TAG_PRUNED_AT,
    TAG_STUDY,
    TAG_TRIAL,
    metric_key,
)
from medfake.core.errors import UserError
from medfake.data.preprocess import ensure_dataset
from medfake.study.tune_space import SPACE_FILE, TuneSpec, check_space, load_spec
from medfake.study.tune_storage import Search, counted_trials, default_storage_path, open_storage, open_study
from medfake.training import train as train_module


@dataclass(frozen=True)
class TuneOptions:
    """What ``medfake tune`` was asked for (its flags, typed)."""

    model: str = "xception"
    trials: int | None = None          # complete + pruned trials to reach; None: tune.yaml's
    study: str = ""                    # "" → <model>-<hash of config and space>
    storage: str = ""                  # "" → the journal beside the tracking store
    config: str = "quickstart"
    overrides: tuple[str, ...] = ()    # key=value items, as ``--set`` gives them
    space: str = ""                    # "" → experiments/tune.yaml
    objective: str = ""                # "" → tune.yaml's
    data: str = ""                     # dataset digest; "" → the config's dataset
    out: str = ""                      # "" → experiments/tuned-<model>.yaml
    quiet: bool = False


# -- the study loop ----------------------------------------------------------------------------
def run_trial(trial, search: Search) -> float:
    """One trial: the train step on the trial's config as a nested run; pruned on the epoch metric."""
    import mlflow
    import optuna
    from mlflow.tracking import MlflowClient

    spec = search.spec
    values = {param.key: param.suggest(trial) for param in spec.params}
    cfg = search.plan.cfg.replace(**values)
    plan = dataclasses.replace(search.plan, cfg=cfg, stage=STAGE_TUNE, run_name=f"{search.plan.model}-trial{trial.number}")
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    child = {"run_id": None}

    def on_epoch(phase: int, epoch: int, logs: dict) -> None:
        child["run_id"] = mlflow.active_run().info.run_id
        value = logs.get(spec.pruner_metric, math.nan)
        if not math.isfinite(value):
            return
        step = epoch if phase == 1 else cfg.train.phase1_epochs + epoch
        trial.report(value, step)
        if trial.should_prune():
            child["pruned_at"] = f"phase {phase} epoch {epoch}"
            raise optuna.TrialPruned(f"{spec.pruner_metric} {value:.4f} at {child['pruned_at']}")

    tags = {TAG_STUDY: search.study_name, TAG_TRIAL: str(trial.number), TAG_PRUNED: "false"}
    try:
        run_id = train_module.train(plan, data_digest=search.data_digest, parent=mlflow.active_run().info.run_id,
                                    progress=search.progress, nested=True, extra_tags=tags, on_epoch=on_epoch)
        child["run_id"] = run_id
        trial.set_user_attr("mlflow_run_id", run_id)
        return float(MlflowClient().get_run(run_id).data.metrics.get(spec.metric, math.nan))
    except optuna.TrialPruned:
        if child["run_id"]:
            trial.set_user_attr("mlflow_run_id", child["run_id"])
            mark_pruned(child["run_id"], child["pruned_at"])
        raise
    finally:
        if child["run_id"]:  # a trial is never resumed: its checkpoints are only disk
            shutil.rmtree(train_module.CHECKPOINT_ROOT / child["run_id"], ignore_errors=True)
        import keras

        keras.backend.clear_session()


def mark_pruned(run_id: str, where: str) -> None:
    """A pruned trial's run: tag ``medfake.pruned=true`` and status KILLED (stopped early, on
    purpose: not a failure, and out of every FINISHED-run query since it has no test metrics)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.set_tag(run_id, TAG_PRUNED, "true")
    client.set_tag(run_id, TAG_PRUNED_AT, where)
    if TAG_FAILURE in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, TAG_FAILURE)
    client.set_terminated(run_id, "KILLED")


def optimize(search: Search, study, target: int) -> None:
    """Run trials until the study holds ``target`` complete or pruned ones (with other workers)."""
    import mlflow
    import optuna
    from optuna.trial import TrialState

    remaining = target - len(counted_trials(study))
    if remaining <= 0:
        print(f"study '{search.study_name}' already has {target} finished trials; nothing to run", file=sys.stderr)
        return
    metric = search.spec.metric

    def log_to_parent(study, trial) -> None:
        if trial.state == TrialState.COMPLETE and trial.value is not None and math.isfinite(trial.value):
            mlflow.log_metric(f"trial_{metric}", trial.value, step=trial.number)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        stop_at_target = optuna.study.MaxTrialsCallback(target, states=(TrialState.COMPLETE, TrialState.PRUNED))
    study.optimize(lambda trial: run_trial(trial, search), n_trials=remaining,
                   callbacks=[stop_at_target, log_to_parent], gc_after_trial=True)


# -- results -----------------------------------------------------------------------------------
def tuned_overrides(config_name: str, overrides: list[str], values: dict) -> dict:
    """The experiment file's overrides, then ``--set``, then the tuned values, as one nested mapping."""
    path = resolve_config_path(config_name)
    base = (config_module.EXPERIMENTS_DIR / config_module.BASE_CONFIG).resolve()
    data = {} if path.resolve() == base else read_yaml(path)
    items = [item.split("=", 1) for item in overrides]
    for key, value in [(k.strip(), parse_value(v.strip())) for k, v in items] + list(values.items()):
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return data


def write_tuned_config(path: Path, data: dict, header: list[str]) -> Path:
    """Write the override file atomically (parallel workers may finish together)."""
    text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def study_plots(study, folder: Path) -> tuple[list[Path], list[str]]:
    """Optimisation history, parameter importances, slice plot and intermediate values as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as views

    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    plots = {
        "optimization_history": views.plot_optimization_history,
        "param_importances": views.plot_param_importances,
        "slice": views.plot_slice,
        "intermediate_values": views.plot_intermediate_values,
    }
    folder.mkdir(parents=True, exist_ok=True)
    written, notes = [], []
    for name, draw in plots.items():
        if name == "param_importances" and complete < 2:
            notes.append(f"no parameter importances: they need 2 completed trials, the study has {complete}")
            continue
        try:
            with warnings.catch_warnings():  # experimental-API and few-trials hints, not news to the user
                warnings.simplefilter("ignore")
                axes = draw(study)
            figure = np.ravel(axes)[0].figure
            figure.savefig(folder / f"{name}.png", dpi=110, bbox_inches="tight")
            written.append(folder / f"{name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            notes.append(f"no {name.replace('_', ' ')} plot: {exc}")
        finally:
            plt.close("all")
    return written, notes


def trials_table(study, spec: TuneSpec, limit: int = 20) -> str:
    """The end-of-search table: trials best first, their parameters, state and MLflow run."""
    from optuna.trial import TrialState

    short = {p.key: p.key.rsplit(".", 1)[-1] for p in spec.params}
    if len(set(short.values())) < len(short):
        short = {p.key: p.key for p in spec.params}
    sign = -1.0 if spec.direction == "maximize" else 1.0
    order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.RUNNING: 2, TrialState.WAITING: 3, TrialState.FAIL: 4}

    def rank(trial):
        value = sign * trial.value if trial.state == TrialState.COMPLETE and trial.value is not None else 0.0
        return (order.get(trial.state, 5), value, trial.number)

    header = ["trial", "state", spec.metric, *short.values(), "run"]
    rows = []
    for trial in sorted(study.get_trials(deepcopy=False), key=rank):
        value = "" if trial.value is None else f"{trial.value:.4f}"
        params = [_cell(trial.params.get(key, "")) for key in short]
        rows.append([str(trial.number), trial.state.name, value, *params, trial.user_attrs.get("mlflow_run_id", "")[:8]])
    shown = rows[:limit]
    widths = [max(len(r[i]) for r in [header, *shown]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *shown]]
    if len(rows) > limit:
        lines.append(f"… {len(rows) - limit} more trials in trials.csv on the parent run")
    return "\n".join("  " + line for line in lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def report(search: Search, study, options: TuneOptions, out: Path) -> Path | None:
    """Log the study's state to the parent run, write the tuned file, print the table."""
    import mlflow
    from optuna.trial import TrialState

    spec = search.spec
    states = [t.state for t in study.get_trials(deepcopy=False)]
    counts = {name: states.count(state) for name, state in
              (("complete", TrialState.COMPLETE), ("pruned", TrialState.PRUNED), ("failed", TrialState.FAIL),
               ("running", TrialState.RUNNING))}
    mlflow.log_metrics({f"trials_{name}": float(n) for name, n in counts.items()})
    with tracking.artifact_tempdir() as tmp:
        folder = Path(tmp)
        plots, notes = study_plots(study, folder / "plots")
        for plot in plots:
            mlflow.log_artifact(str(plot), "plots")
        frame = study.trials_dataframe()
        frame.to_csv(folder / "trials.csv", index=False)
        mlflow.log_artifact(str(folder / "trials.csv"))
    written = None
    best = study.best_trial if counts["complete"] else None
    if best is not None:
        values = {p.key: p.config_value(best.params[p.key]) for p in spec.params}
        data = tuned_overrides(options.config, list(options.overrides), values)
        header = [f"Tuned by `medfake tune` (study '{search.study_name}', trial {best.number}: "
                  f"{spec.metric} {best.value:.4f}, {spec.direction}d).",
                  f"Train it: medfake train --model {search.plan.model} --config {_config_arg(out)}"]
        written = write_tuned_config(out, data, header)
        mlflow.log_metric(f"best_{spec.metric}", best.value)
        mlflow.set_tags({TAG_BEST_TRIAL: str(best.number),
                         TAG_BEST_RUN: best.user_attrs.get("mlflow_run_id", "")})
        mlflow.log_artifact(str(written))
    parent = mlflow.active_run().info.run_id
    print(f"\nstudy '{search.study_name}' — {len(states)} trials: {counts['complete']} complete, "
          f"{counts['pruned']} pruned, {counts['failed']} failed, {counts['running']} running "
          f"({spec.metric}, {spec.direction})")
    print(trials_table(study, spec))
    for note in notes:
        print(f"  note: {note}")
    if best is None:
        print("no trial completed: nothing to write")
    else:
        data_flag = f" --data {search.data_digest}" if options.data else ""
        print(f"best: trial {best.number}, {spec.metric} {best.value:.4f} → {written}")
        print(f"  train it: medfake train --model {search.plan.model} --config {_config_arg(written)}{data_flag}")
    print(f"MLflow parent run {parent} in experiment '{search.plan.cfg.experiment}' — look at it with `mlflow ui` "
          f"({tracking.run_ui_url(parent)}); "
          f"study in {search.storage_shown} (join or resume: --study {search.study_name})")
    return written


def _config_arg(path: Path) -> str:
    """How ``--config`` names the file: its stem inside experiments/, else its path."""
    if path.resolve().parent in (config_module.EXPERIMENTS_DIR.resolve(), config_module.USER_EXPERIMENTS_DIR.resolve()):
        return path.stem
    return str(path)


# -- the step ----------------------------------------------------------------------------------
def prepare(options: TuneOptions) -> tuple[Search, Any, int]:
    """Every check before the first trial: space, config, model, storage, dataset, study."""
    space_path = Path(options.space) if options.space else resolve_config_path(SPACE_FILE)
    spec = load_spec(space_path, objective=options.objective or None)
    target = spec.trials if options.trials is None else options.trials
    if target < 1:
        raise UserError(f"--trials must be at least 1, got {target}")
    cfg = load_config(options.config, list(options.overrides))
    if options.model.strip().lower() == BASELINE:
        raise UserError("the baseline has none of the searched hyperparameters; tune a backbone")
    plan = train_module.resolve_plan(options.model, cfg, STAGE_TUNE)
    check_space(spec, plan.cfg)
    if spec.metric.startswith(metric_key("test", "")):
        print(f"medfake tune: warning: choosing hyperparameters on {spec.metric} makes the test metrics optimistic",
              file=sys.stderr)
    storage, shown = open_storage(options.storage or str(default_storage_path()))
    dataset, _ = ensure_dataset(plan.cfg, progress=not options.quiet, digest=options.data or None)
    default_name = hashlib.sha256(f"{plan.cfg.digest()}:{spec.digest()}".encode()).hexdigest()[:8]
    search = Search(spec=spec, plan=plan, data_digest=dataset.digest,
                    study_name=options.study or f"{plan.model.lower()}-{default_name}",
                    storage_shown=shown, progress=not options.quiet)
    study = open_study(search, storage)
    return search, study, target


def tune(options: TuneOptions) -> Path | None:
    """The whole step; returns the tuned override file (None when no trial completed)."""
    import mlflow

    search, study, target = prepare(options)
    spec, plan = search.spec, search.plan
    out = Path(options.out) if options.out else config_module.USER_EXPERIMENTS_DIR / f"tuned-{plan.model.lower()}.yaml"
    tags = {TAG_STUDY: search.study_name, TAG_MODEL: plan.model, TAG_DATA_DIGEST: search.data_digest,
            TAG_DEVICE: device.device_name()}
    with tracking.run(plan.cfg.experiment, f"tune-{search.study_name}", STAGE_TUNE, tags=tags):
        tracking.log_config(plan.cfg)
        tracking.log_params({
            "tune.model": plan.model, "tune.study": search.study_name, "tune.storage": search.storage_shown,
            "tune.objective": spec.metric, "tune.direction": spec.direction, "tune.trials": target,
            "tune.sampler": spec.sampler, "tune.sampler_seed": spec.sampler_seed, "tune.pruner": spec.pruner,
            "tune.pruner_metric": spec.pruner_metric,
            **{f"tune.pruner.{k}": v for k, v in spec.pruner_args.items()},
            **{f"tune.space.{p.key}": p.describe() for p in spec.params},
        })
        mlflow.log_artifact(str(spec.path))
        optimize(search, study, target)
        return report(search, study, options, out)


# -- CLI ---------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="xception", help="backbone registry name (case-insensitive)")
    parser.add_argument("--trials", default="", help="complete + pruned trials the study should reach, counting "
                        "earlier runs and other workers (default: tune.yaml's)")
    parser.add_argument("--study", default="", help="study name; the same name joins or resumes it "
                        "(default: <model>-<hash of config and space>)")
    parser.add_argument("--storage", default="", help="Optuna storage: a journal file path or an RDB URL such as "
                        "postgresql://user@host/db (default: optuna.journal beside the MLflow store)")
    add_config_arguments(parser)
    parser.add_argument("--space", default="", help="search-space file (default: experiments/tune.yaml)")
    parser.add_argument("--objective", default="", help="metric to optimise, e.g. val_h (default: tune.yaml's; "
                        "*_loss is minimised, the rest maximised)")
    parser.add_argument("--data", default="", help="dataset digest to tune on (default: the config's dataset)")
    parser.add_argument("--out", default="", help="tuned override file (default: experiments/tuned-<model>.yaml)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def options_from_args(args: argparse.Namespace) -> TuneOptions:
    trials = None
    if str(args.trials).strip():
        try:
            trials = int(args.trials)
        except ValueError:
            raise UserError(f"--trials '{args.trials}' is not an integer") from None
    return TuneOptions(model=args.model, trials=trials, study=args.study, storage=args.storage, config=args.config,
                       overrides=tuple(split_overrides(args.set)), space=args.space, objective=args.objective,
                       data=args.data, out=args.out, quiet=args.quiet)


def run(args: argparse.Namespace) -> int:
    return 0 if tune(options_from_args(args)) is not None else 1
