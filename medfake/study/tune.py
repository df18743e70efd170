"""The ``tune`` step: hyperparameter search with Optuna over the train step, tracked in MLflow.

The study fixed every hyperparameter (section 4) and names their effect as future work. Each trial
is a real train run (feature cache, both phases, the full evaluation) nested under the search's
parent run with tag ``medfake.stage=tune``; a pruner (median by default) stops trials whose
per-epoch validation metric falls behind. The study lives in Optuna storage — a journal file beside
the tracking store by default, any RDB URL for workers on several machines — so another
``medfake tune`` with the same ``--study`` joins it (parallel) or resumes it (after a stop).
The best trial becomes ``experiments/tuned-<model>.yaml``, an override file ``train`` takes as is.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
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
from medfake.core import device
from medfake.core.contract import BASELINE
from medfake.core.config import Config, parse_value, read_yaml, resolve_config_path
from medfake.core.errors import UserError
from medfake.training.metrics import METRICS

SPACE_FILE = "tune.yaml"
JOURNAL_NAME = "optuna.journal"
SPLITS = ("val", "test")
#: What a trial can be judged by: every ``{split}_{metric}`` the train step logs for val and test.
OBJECTIVE_METRICS = tuple(f"{split}_{name}" for split in SPLITS for name in (*METRICS, "loss"))
#: Per-epoch validation signals the train loop reports (``fitting.run_phase`` logs) and their direction.
EPOCH_METRICS = {"val_auc": "maximize", "val_loss": "minimize"}
DIRECTIONS = ("maximize", "minimize")
#: tune.yaml ``pruner.type`` → ``optuna.pruners`` class; the other keys are its arguments.
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "threshold": "ThresholdPruner",
    "hyperband": "HyperbandPruner",
    "none": "NopPruner",
}
#: tune.yaml ``sampler.type`` → ``optuna.samplers`` class; ``seed`` and the other keys are its arguments.
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler"}
#: Keys a search cannot vary: the model comes from ``--model``; data keys other than the window
#: change the dataset, and trials are compared on one dataset.
FIXED_KEYS = ("experiment", "model.backbone")
TAG_STUDY = "medfake.study"
TAG_TRIAL = "medfake.trial"
TAG_PRUNED = "medfake.pruned"


# -- the search space ------------------------------------------------------------------------
@dataclass(frozen=True)
class FloatParam:
    """``{type: float, low, high, log?, step?}`` → ``trial.suggest_float``."""

    key: str
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @classmethod
    def parse(cls, key: str, entry: dict, where: str) -> "FloatParam":
        low, high = _number(entry, "low", where), _number(entry, "high", where)
        log = _flag(entry, "log", where)
        step = _number(entry, "step", where) if entry.get("step") is not None else None
        _check_range(low, high, log, step, where)
        return cls(key, float(low), float(high), log, step)

    def suggest(self, trial) -> float:
        return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)

    def config_value(self, value: Any) -> Any:
        return value

    def probes(self) -> list:
        return [self.low, self.high]

    def describe(self) -> str:
        return f"float [{self.low:g}, {self.high:g}]" + (" log" if self.log else "") + (f" step {self.step:g}" if self.step else "")


@dataclass(frozen=True)
class IntParam:
    """``{type: int, low, high, log?, step?}`` → ``trial.suggest_int``."""

    key: str
    low: int
    high: int
    log: bool = False
    step: int = 1

    @classmethod
    def parse(cls, key: str, entry: dict, where: str) -> "IntParam":
        values = {}
        for name in ("low", "high", "step"):
            if name == "step" and entry.get("step") is None:
                values[name] = 1
                continue
            value = _number(entry, name, where)
            if int(value) != value:
                raise UserError(f"{where}: {name} {value!r} is not an integer (use type: float)")
            values[name] = int(value)
        log = _flag(entry, "log", where)
        _check_range(values["low"], values["high"], log, values["step"] if entry.get("step") is not None else None, where)
        return cls(key, values["low"], values["high"], log, values["step"])

    def suggest(self, trial) -> int:
        return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step)

    def config_value(self, value: Any) -> Any:
        return value

    def probes(self) -> list:
        return [self.low, self.high]

    def describe(self) -> str:
        return f"int [{self.low}, {self.high}]" + (" log" if self.log else "") + (f" step {self.step}" if self.step != 1 else "")


@dataclass(frozen=True)
class CategoricalParam:
    """``{type: categorical, choices: [...]}`` → ``trial.suggest_categorical``.

    Optuna stores only scalar choices; a list choice (``model.head_units``) is offered under its
    YAML text (``"[512, 256]"``) and turned back into the list for the config.
    """

    key: str
    choices: tuple

    @classmethod
    def parse(cls, key: str, entry: dict, where: str) -> "CategoricalParam":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: choices must be a non-empty list")
        labels = [_choice_label(c) for c in choices]
        if len(set(map(repr, labels))) != len(labels):
            raise UserError(f"{where}: choices repeat a value")
        return cls(key, tuple(choices))

    def suggest(self, trial) -> Any:
        return self.config_value(trial.suggest_categorical(self.key, [_choice_label(c) for c in self.choices]))

    def config_value(self, value: Any) -> Any:
        for choice in self.choices:
            if _choice_label(choice) == value:
                return choice
        return value

    def probes(self) -> list:
        return list(self.choices)

    def describe(self) -> str:
        return "one of " + ", ".join(str(_choice_label(c)) for c in self.choices)


#: tune.yaml ``type`` → parameter class.
PARAM_TYPES = {"float": FloatParam, "int": IntParam, "categorical": CategoricalParam}
ENTRY_FIELDS = {"type", "low", "high", "log", "step", "choices"}


def _choice_label(choice: Any) -> Any:
    """A choice as Optuna can store it: scalars as they are, lists and mappings as YAML text."""
    if choice is None or isinstance(choice, (bool, int, float, str)):
        return choice
    return yaml.safe_dump(choice, default_flow_style=True).strip()


def _number(entry: dict, name: str, where: str) -> float:
    value = entry.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: {name} must be a number, got {value!r}")
    return value


def _flag(entry: dict, name: str, where: str) -> bool:
    value = entry.get(name, False)
    if not isinstance(value, bool):
        raise UserError(f"{where}: {name} must be true or false, got {value!r}")
    return value


def _check_range(low, high, log: bool, step, where: str) -> None:
    if low > high:
        raise UserError(f"{where}: low {low} > high {high}")
    if log and low <= 0:
        raise UserError(f"{where}: log: true needs low > 0, got {low}")
    if step is not None and (step <= 0 or log):
        raise UserError(f"{where}: step must be > 0 and cannot go with log: true")


@dataclass(frozen=True)
class TuneSpec:
    """A validated tune.yaml: objective, trials, sampler, pruner and the search space."""

    path: Path
    metric: str
    direction: str
    trials: int
    sampler: str
    sampler_seed: int | None
    sampler_args: dict
    pruner: str
    pruner_metric: str
    pruner_args: dict
    params: tuple

    def digest(self) -> str:
        text = json.dumps({"space": [dataclasses.asdict(p) | {"type": type(p).__name__} for p in self.params],
                           "metric": self.metric, "direction": self.direction}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_spec(path: str | os.PathLike, objective: str | None = None) -> TuneSpec:
    """Read and check a tune.yaml; ``objective`` (``--objective``) replaces its metric and direction."""
    path = Path(path)
    raw = read_yaml(path)
    known = {"objective", "trials", "sampler", "pruner", "space"}
    for key in raw:
        if key not in known:
            raise UserError(f"{path}: unknown key '{key}' (expected {', '.join(sorted(known))})")
    obj = _section(raw, "objective", path)
    metric = objective or obj.get("metric", "val_auc")
    natural = "minimize" if str(metric).endswith("_loss") else "maximize"
    direction = natural if objective else obj.get("direction", natural)
    if metric not in OBJECTIVE_METRICS:
        raise UserError(f"{path}: objective metric '{metric}' is not logged by the train step "
                        f"(one of {', '.join(OBJECTIVE_METRICS)})")
    if direction not in DIRECTIONS:
        raise UserError(f"{path}: objective direction '{direction}' is not one of {', '.join(DIRECTIONS)}")
    if direction != natural:
        raise UserError(f"{path}: objective {metric} should be {natural}d, not {direction}d")
    trials = raw.get("trials", 20)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise UserError(f"{path}: trials must be a positive integer, got {trials!r}")

    sampler = dict(_section(raw, "sampler", path))
    sampler_type = sampler.pop("type", "tpe")
    if sampler_type not in SAMPLERS:
        raise UserError(f"{path}: sampler type '{sampler_type}' is not one of {', '.join(SAMPLERS)}")
    seed = sampler.pop("seed", None)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise UserError(f"{path}: sampler seed must be an integer or null, got {seed!r}")

    pruner = dict(_section(raw, "pruner", path))
    pruner_type = pruner.pop("type", "median")
    if pruner_type not in PRUNERS:
        raise UserError(f"{path}: pruner type '{pruner_type}' is not one of {', '.join(PRUNERS)}")
    pruner_metric = pruner.pop("metric", "auto")
    if pruner_metric == "auto":
        pruner_metric = next(name for name, way in EPOCH_METRICS.items() if way == direction)
    if pruner_metric not in EPOCH_METRICS:
        raise UserError(f"{path}: pruner metric '{pruner_metric}' is not a per-epoch metric "
                        f"(one of {', '.join(EPOCH_METRICS)}, or auto)")
    if EPOCH_METRICS[pruner_metric] != direction:
        raise UserError(f"{path}: pruner metric {pruner_metric} runs against the objective's direction ({direction})")

    space = _section(raw, "space", path)
    if not space:
        raise UserError(f"{path}: space is empty")
    params = []
    for key, entry in space.items():
        where = f"{path}: space.{key}"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: expected a mapping like {{type: float, low: 0.0, high: 1.0}}")
        unknown = set(entry) - ENTRY_FIELDS
        if unknown:
            raise UserError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        kind = entry.get("type")
        if kind not in PARAM_TYPES:
            raise UserError(f"{where}: unknown type {kind!r} (one of {', '.join(PARAM_TYPES)})")
        params.append(PARAM_TYPES[kind].parse(str(key), entry, where))
    spec = TuneSpec(path, metric, direction, trials, sampler_type, seed, sampler, pruner_type, pruner_metric,
                    pruner, tuple(params))
    make_pruner(spec)  # its arguments are checked by constructing it
    make_sampler(spec, 0)
    return spec


def _section(raw: dict, name: str, path: Path) -> dict:
    value = raw.get(name) or {}
    if not isinstance(value, dict):
        raise UserError(f"{path}: {name} must be a mapping")
    return value


def check_space(spec: TuneSpec, cfg: Config) -> None:
    """Every space key is a searchable config key and every value it can take is valid there."""
    flat = cfg.flat()
    for param in spec.params:
        where = f"{spec.path}: space.{param.key}"
        if param.key not in flat:
            raise UserError(f"{where}: unknown config key '{param.key}'")
        if param.key in FIXED_KEYS or (param.key.startswith("data.") and not param.key.startswith("data.window.")):
            raise UserError(f"{where}: '{param.key}' cannot be searched (the model comes from --model; "
                            "data keys other than data.window change the dataset)")
        current = flat[param.key]
        if isinstance(param, FloatParam) and isinstance(current, int):
            raise UserError(f"{where}: '{param.key}' takes {'true/false' if isinstance(current, bool) else 'integers'}; "
                            "use type: int or categorical")
        for value in param.probes():
            try:
                cfg.replace(**{param.key: value})
            except UserError as exc:
                raise UserError(f"{where}: {exc}") from None


def make_pruner(spec: TuneSpec):
    import optuna

    try:
        return getattr(optuna.pruners, PRUNERS[spec.pruner])(**spec.pruner_args)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{spec.path}: pruner {spec.pruner}: {exc}") from None


def make_sampler(spec: TuneSpec, trials_so_far: int):
    """The sampler; a fixed seed is offset by the trials already run, so a resumed study does not
    replay its first proposals."""
    import optuna

    seed = None if spec.sampler_seed is None else spec.sampler_seed + trials_so_far
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return getattr(optuna.samplers, SAMPLERS[spec.sampler])(seed=seed, **spec.sampler_args)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{spec.path}: sampler {spec.sampler}: {exc}") from None


# -- storage ---------------------------------------------------------------------------------
def default_storage_path(tracking_uri: str | None = None) -> Path:
    """The journal file beside the MLflow store (``mlflow.db``'s folder, or ``mlruns``'s parent);
    for a remote tracking server, ``.medfake/optuna.journal`` in the working directory."""
    from urllib.parse import urlparse

    from medfake.core.tracking import DEFAULT_TRACKING_URI

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent / JOURNAL_NAME
    if uri.startswith("file:"):
        return Path(urlparse(uri).path).parent / JOURNAL_NAME
    if "://" not in uri:
        return Path(uri).parent / JOURNAL_NAME
    return Path(".medfake") / JOURNAL_NAME


def redact(url: str) -> str:
    """A storage URL without its password, for messages, params and the table."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable as a database URL: drop anything between ':' and '@'
        import re

        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def open_storage(text: str):
    """``--storage`` → (Optuna storage, how to show it). An RDB URL (``postgresql://…``,
    ``sqlite:///…``) or a journal file path; one that cannot be used is a one-line error."""
    import optuna

    if "://" in text:
        shown = redact(text)
        kwargs = {}
        if text.startswith(("postgresql", "mysql")):
            kwargs["engine_kwargs"] = {"connect_args": {"connect_timeout": 10}}
        try:
            storage = optuna.storages.RDBStorage(text, **kwargs)
        except Exception as exc:  # a driver error of any kind: the URL cannot be used
            detail = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
            raise UserError(f"--storage {shown}: cannot be reached or opened ({type(exc).__name__}: {detail})") from None
        if text.startswith("sqlite"):
            print("medfake tune: note: SQLite storage is for one worker; parallel workers need a journal "
                  "file or a database server", file=sys.stderr)
        return storage, shown
    path = Path(text).expanduser()
    if path.is_dir():
        raise UserError(f"--storage {path}: is a folder; give a journal file path or a database URL")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--storage {path}: cannot create folder {path.parent} ({exc.strerror or exc})") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"--storage {path}: not writable")
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    try:
        return JournalStorage(JournalFileBackend(str(path))), str(path.resolve())
    except Exception as exc:
        raise UserError(f"--storage {path}: cannot be used as a journal ({type(exc).__name__}: {exc})") from None


# -- the study ---------------------------------------------------------------------------------
@dataclass
class Search:
    """Everything a trial needs, resolved before the first one starts."""

    spec: TuneSpec
    plan: Any                  # train.Plan of the base config
    data_digest: str
    study_name: str
    storage_shown: str
    progress: bool


def study_identity(search: Search) -> dict:
    """What must match for a second ``medfake tune`` to join a study."""
    return {"model": search.plan.model, "objective": search.spec.metric, "direction": search.spec.direction,
            "config_digest": search.plan.cfg.digest(), "space_digest": search.spec.digest(),
            "data_digest": search.data_digest}


def open_study(search: Search, storage):
    """Create the study or load it (``load_if_exists``); refuse to mix trials of another setup."""
    import optuna

    spec = search.spec
    study = optuna.create_study(study_name=search.study_name, storage=storage, direction=spec.direction,
                                pruner=make_pruner(spec), load_if_exists=True)
    mine = study_identity(search)
    stored = study.user_attrs.get("medfake")
    if stored is None:
        study.set_user_attr("medfake", mine)
    elif stored != mine:
        differ = ", ".join(k.replace("_", " ") for k in mine if stored.get(k) != mine[k])
        raise UserError(f"study '{search.study_name}' in {search.storage_shown} was made with another {differ}; "
                        "use the same settings to join it or another --study")
    study.sampler = make_sampler(spec, len(study.trials))
    return study


def counted_trials(study) -> list:
    """Trials that count toward ``--trials``: complete or pruned (failed ones are run again)."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def run_trial(trial, search: Search) -> float:
    """One trial: the train step on the trial's config as a nested run; pruned on the epoch metric."""
    import mlflow
    import optuna
    from mlflow.tracking import MlflowClient

    from medfake.training import train as train_module

    spec = search.spec
    values = {param.key: param.suggest(trial) for param in spec.params}
    cfg = search.plan.cfg.replace(**values)
    plan = dataclasses.replace(search.plan, cfg=cfg, stage="tune", run_name=f"{search.plan.model}-trial{trial.number}")
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

    from medfake.core import tracking

    client = MlflowClient()
    client.set_tag(run_id, TAG_PRUNED, "true")
    client.set_tag(run_id, "medfake.pruned_at", where)
    if tracking.TAG_FAILURE in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, tracking.TAG_FAILURE)
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


def report(search: Search, study, args: argparse.Namespace, out: Path) -> Path | None:
    """Log the study's state to the parent run, write the tuned file, print the table."""
    import mlflow
    from optuna.trial import TrialState

    from medfake.core import tracking

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
        data = tuned_overrides(args.config, _overrides(args), values)
        header = [f"Tuned by `medfake tune` (study '{search.study_name}', trial {best.number}: "
                  f"{spec.metric} {best.value:.4f}, {spec.direction}d).",
                  f"Train it: medfake train --model {search.plan.model} --config {_config_arg(out)}"]
        written = write_tuned_config(out, data, header)
        mlflow.log_metric(f"best_{spec.metric}", best.value)
        mlflow.set_tags({"medfake.best_trial": str(best.number),
                         "medfake.best_run": best.user_attrs.get("mlflow_run_id", "")})
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
        data_flag = f" --data {search.data_digest}" if args.data else ""
        print(f"best: trial {best.number}, {spec.metric} {best.value:.4f} → {written}")
        print(f"  train it: medfake train --model {search.plan.model} --config {_config_arg(written)}{data_flag}")
    print(f"MLflow parent run {parent} in experiment '{search.plan.cfg.experiment}' — look at it with `mlflow ui`; "
          f"study in {search.storage_shown} (join or resume: --study {search.study_name})")
    return written


def _config_arg(path: Path) -> str:
    """How ``--config`` names the file: its stem inside experiments/, else its path."""
    if path.resolve().parent in (config_module.EXPERIMENTS_DIR.resolve(), config_module.USER_EXPERIMENTS_DIR.resolve()):
        return path.stem
    return str(path)


def _overrides(args: argparse.Namespace) -> list[str]:
    from medfake.core.config import split_overrides

    return split_overrides(args.set)


# -- the step ----------------------------------------------------------------------------------
def prepare(args: argparse.Namespace) -> tuple[Search, Any, int]:
    """Every check before the first trial: space, config, model, storage, dataset, study."""
    from medfake.training import train as train_module
    from medfake.core.config import config_from_args

    space_path = Path(args.space) if args.space else config_module.resolve_config_path(SPACE_FILE)
    spec = load_spec(space_path, objective=args.objective or None)
    target = spec.trials
    if str(args.trials).strip():
        try:
            target = int(args.trials)
        except ValueError:
            raise UserError(f"--trials '{args.trials}' is not an integer") from None
        if target < 1:
            raise UserError(f"--trials must be at least 1, got {target}")
    cfg = config_from_args(args)
    if args.model.strip().lower() == BASELINE:
        raise UserError("the baseline has none of the searched hyperparameters; tune a backbone")
    plan = train_module.resolve_plan(args.model, cfg, "tune")
    check_space(spec, plan.cfg)
    if spec.metric.startswith("test_"):
        print(f"medfake tune: warning: choosing hyperparameters on {spec.metric} makes the test metrics optimistic",
              file=sys.stderr)
    storage, shown = open_storage(args.storage or str(default_storage_path()))
    from medfake.data.preprocess import ensure_dataset

    dataset, _ = ensure_dataset(plan.cfg, progress=not args.quiet, digest=args.data or None)
    default_name = hashlib.sha256(f"{plan.cfg.digest()}:{spec.digest()}".encode()).hexdigest()[:8]
    search = Search(spec=spec, plan=plan, data_digest=dataset.digest,
                    study_name=args.study or f"{plan.model.lower()}-{default_name}",
                    storage_shown=shown, progress=not args.quiet)
    study = open_study(search, storage)
    return search, study, target


def tune(args: argparse.Namespace) -> Path | None:
    """The whole step; returns the tuned override file (None when no trial completed)."""
    import mlflow

    from medfake.core import tracking

    search, study, target = prepare(args)
    spec, plan = search.spec, search.plan
    out = Path(args.out) if args.out else config_module.USER_EXPERIMENTS_DIR / f"tuned-{plan.model.lower()}.yaml"
    tags = {TAG_STUDY: search.study_name, "medfake.model": plan.model, tracking.TAG_DATA_DIGEST: search.data_digest,
            tracking.TAG_DEVICE: device.device_name()}
    with tracking.run(plan.cfg.experiment, f"tune-{search.study_name}", "tune", tags=tags):
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
        return report(search, study, args, out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from medfake.core.config import add_config_arguments

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


def run(args: argparse.Namespace) -> int:
    return 0 if tune(args) is not None else 1
