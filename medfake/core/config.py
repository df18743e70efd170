"""Typed, strict experiment configuration.

``experiments/base.yaml`` holds every key; an experiment file holds only overrides; command-line
``--set key=value`` overrides win last. Unknown or duplicated keys are errors that name the key.
The resolved config is frozen dataclasses, flattened for MLflow params and digested for tags.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from medfake.core.errors import UserError

# The experiment files shipped with the package; ./experiments/ of the working directory is
# searched first, so a user's own file (or `medfake tune`'s tuned-<model>.yaml) wins.
EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"
USER_EXPERIMENTS_DIR = Path("experiments")
BASE_CONFIG = "base.yaml"
DEFAULT_CONFIG = "quickstart.yaml"


@dataclass(frozen=True)
class PhantomConfig:
    root: str = "data/phantom"
    scans: int = 20
    lidc_scans: int = 10
    size: int = 512
    slices: int = 120
    seed: int = 7


@dataclass(frozen=True)
class WindowConfig:
    center: float = -600.0
    width: float = 1500.0


@dataclass(frozen=True)
class DataConfig:
    source: Literal["phantom", "real"] = "phantom"
    ctgan_root: str | None = None
    lidc_root: str | None = None
    phantom: PhantomConfig = field(default_factory=PhantomConfig)
    slice_radius: int = 5
    negatives: Literal["lidc_random", "matched"] = "lidc_random"
    split: Literal["random", "by_scan", "by_experiment"] = "random"
    split_fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
    image_size: int = 512
    window: WindowConfig = field(default_factory=WindowConfig)
    cache_dir: str = ".medfake/datasets"
    seed: int = 0


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "xception"
    weights: str = "imagenet"
    head_units: tuple[int, ...] = (512, 256)
    dropout: float = 0.0
    noise_residual: bool = False


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 8
    beta_1: float = 0.9
    beta_2: float = 0.999
    phase1_epochs: int = 80
    phase1_lr: float = 1e-4
    phase2_epochs: int = 20
    phase2_lr: float = 1e-5
    # Phase-2 rate of a backbone without normalisation layers (VGG19); None: phase2_lr. From random
    # weights Adam at a BatchNorm backbone's rate kills VGG19's ReLUs (training loss stuck at ln 2).
    phase2_lr_unnormalised: float | None = None
    unfreeze: str = "all"
    feature_cache: bool = True
    bn_recalibration_batches: int = 0
    ema_momentum: float = 0.0
    precision: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    jit_compile: Literal["auto", "true", "false"] = "auto"


@dataclass(frozen=True)
class EvalConfig:
    threshold: float = 0.5
    bootstrap_samples: int = 1000
    ci_level: float = 0.95
    latency_steps: int = 10
    explain: bool = False
    runtime_check: bool = True


@dataclass(frozen=True)
class StudyConfig:
    """What ``paper`` runs after ``select``: the ensemble of the top models."""

    ensemble: bool = False
    ensemble_top_k: int = 3
    ensemble_combiner: Literal["mean", "logit-mean", "stacking"] = "mean"
    generalise_to: str | None = None  # data config the kept models are evaluated on (generalisation table)


@dataclass(frozen=True)
class Config:
    experiment: str = "medfake"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    study: StudyConfig = field(default_factory=StudyConfig)

    # -- derived views -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def flat(self) -> dict[str, Any]:
        """Dotted keys → values, for MLflow params (``data.image_size`` …)."""
        return flatten(self.to_dict())

    def digest(self) -> str:
        """Stable hash of the resolved config (tag ``medfake.config_digest``).

        The ``study`` section is left out: it says which steps ``paper`` drives, not what any run
        computes, so switching the ensemble on keeps every finished train run reusable.
        """
        settings = self.to_dict()
        settings.pop("study")
        text = json.dumps(settings, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **overrides: Any) -> "Config":
        """A copy with dotted-key overrides applied (validated like ``--set``)."""
        data = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(data, key, value, source="override")
        return _build(Config, data, "")


# -- loading -----------------------------------------------------------------------------
class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise UserError(
                f"{node.start_mark.name}: line {key_node.start_mark.line + 1}: duplicate key '{key}'"
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML mapping, rejecting duplicate keys; errors name the file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UserError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f": line {where.line + 1}" if where else ""
        raise UserError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must be a mapping of keys to values")
    return data


def resolve_config_path(name: str | os.PathLike | None) -> Path:
    """``quickstart``, ``quickstart.yaml`` or a path → an existing experiment file: the path as
    given, else ``./experiments/<name>.yaml``, else the file shipped with the package."""
    if name is None or str(name) == "":
        name = DEFAULT_CONFIG
    path = Path(name)
    candidates = [path]
    if not path.suffix:
        candidates.append(path.with_suffix(".yaml"))
    names = [c.name for c in candidates if len(c.parts) == 1]
    candidates += [USER_EXPERIMENTS_DIR / n for n in names] + [EXPERIMENTS_DIR / n for n in names]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    shipped = [*USER_EXPERIMENTS_DIR.glob("*.yaml"), *EXPERIMENTS_DIR.glob("*.yaml")]
    known = ", ".join(sorted({p.stem for p in shipped if p.stem != "tune"}))  # tune.yaml: a search space
    raise UserError(f"config '{name}' not found (experiments: {known})")


def load_config(name: str | os.PathLike | None = None, overrides: list[str] | dict | None = None) -> Config:
    """base.yaml ← experiment file ← ``key=value`` overrides, validated into a ``Config``."""
    data = read_yaml(EXPERIMENTS_DIR / BASE_CONFIG)
    path = resolve_config_path(name)
    if path.resolve() != (EXPERIMENTS_DIR / BASE_CONFIG).resolve():
        _merge(data, read_yaml(path), source=str(path), prefix="")
    items = overrides.items() if isinstance(overrides, dict) else (_split_override(o) for o in overrides or [])
    for key, value in items:
        _set_dotted(data, key, value, source="--set")
    return _build(Config, data, "")


def parse_value(text: str) -> Any:
    """A ``--set`` value as YAML scalar/list (``1e-4``, ``true``, ``[1, 2]``, ``null``)."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def _split_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise UserError(f"--set '{item}': expected key=value (for example train.phase1_epochs=2)")
    key, value = item.split("=", 1)
    return key.strip(), parse_value(value.strip())


def _merge(base: dict, update: dict, source: str, prefix: str) -> None:
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise UserError(f"{source}: unknown config key '{dotted}'")
        if isinstance(base[key], dict) and isinstance(value, dict):
            _merge(base[key], value, source, dotted + ".")
        elif isinstance(base[key], dict):
            raise UserError(f"{source}: config key '{dotted}' is a section, not a value")
        else:
            base[key] = value


def _set_dotted(data: dict, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise UserError(f"{source}: unknown config key '{key}'")
        if i == len(parts) - 1:
            if isinstance(node[part], dict) and not isinstance(value, dict):
                raise UserError(f"{source}: config key '{key}' is a section, not a value")
            if isinstance(node[part], dict):
                _merge(node[part], value, source, key + ".")
            else:
                node[part] = value
        else:
            node = node[part]


def _build(cls: type, data: Any, prefix: str):
    if not isinstance(data, dict):
        raise UserError(f"config key '{prefix.rstrip('.') or '<root>'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise UserError(f"unknown config key '{prefix}{key}'")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            values[f.name] = _coerce(hints[f.name], data[f.name], prefix + f.name)
    return cls(**values)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is Literal:
        text = str(value).lower() if isinstance(value, bool) else value
        if text not in args:
            raise UserError(f"config key '{key}': {value!r} is not one of {', '.join(map(str, args))}")
        return text
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}': expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, key) for v in value)
        if len(value) != len(args):
            raise UserError(f"config key '{key}': expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, key) for a, v in zip(args, value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise UserError(f"config key '{key}': expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise UserError(f"config key '{key}': expected a string, got {value!r}")
        return str(value).lower() if isinstance(value, bool) else str(value)
    return value


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def data_root(configured: str | None, key: str, env: str) -> Path:
    """A real-data root from config key ``key`` or environment variable ``env``, or a clear error."""
    value = configured or os.environ.get(env)
    if not value:
        raise UserError(f"{key} is not set: pass --set {key}=DIR or set {env}")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise UserError(f"{key}: '{path}' is not a folder")
    return path


# The command-line side of a config, shared by every step.
def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--set`` as every step takes them."""
    parser.add_argument("--config", default="quickstart", help="experiment file or name (default: quickstart)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set data.image_size=96 (repeatable; one string may hold several)",
    )


def split_overrides(chunks: list[str]) -> list[str]:
    """``--set`` values → ``key=value`` items; one string may hold several, separated by spaces
    (as ``-P set="a=1 b=2"`` passes them); a word without ``=`` continues the previous value."""
    items: list[str] = []
    for chunk in chunks:
        for word in chunk.split():
            if "=" in word.split("[", 1)[0] or not items:
                items.append(word)
            else:
                items[-1] += " " + word
    return items


def config_from_args(args: argparse.Namespace, extra: dict | None = None) -> Config:
    cfg = load_config(args.config, split_overrides(args.set))
    return cfg.replace(**extra) if extra else cfg
