"""The ``tune`` search space: a typed, checked reading of ``tune.yaml``.

``tune.yaml`` names the objective (a ``{split}_{metric}`` the train step logs, with its natural
direction), the number of trials, the Optuna sampler and pruner with their arguments, and the
space: one entry per config key (``float``, ``int`` or ``categorical``). Every mistake is a
one-line error naming the file and the entry, found before any trial or study is opened.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medfake.core.config import Config, read_yaml
from medfake.core.contract import metric_key
from medfake.core.errors import UserError
from medfake.training.metrics import METRICS

SPACE_FILE = "tune.yaml"
SPLITS = ("val", "test")
#: What a trial can be judged by: every ``{split}_{metric}`` the train step logs for val and test.
OBJECTIVE_METRICS = tuple(metric_key(split, name) for split in SPLITS for name in (*METRICS, "loss"))
#: Per-epoch validation signals the train loop reports (``fitting.run_phase`` logs) and their direction.
EPOCH_METRICS = {metric_key("val", "auc"): "maximize", metric_key("val", "loss"): "minimize"}
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
    metric = objective or obj.get("metric", metric_key("val", "auc"))
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
