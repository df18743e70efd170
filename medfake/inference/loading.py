"""Which detector scores the slices, and on which runtime: ``--model``/``--endpoint`` → a :class:`Scorer`.

``--model`` is a registered model (``models:/…``), a run (``runs:/…`` or a bare run id), an MLflow
model folder, or a ``.keras``/``.onnx``/``.xml`` file. A Keras detector runs on the fastest
installed runtime unless one is named; ONNX/OpenVINO exports of a registered model are cached under
``.medfake/exports/<model uuid>`` so the second scan starts at once. Models load without their
optimizer (inference never needs it). When a runtime truly cannot take a model (an op its
converter lacks), the scan runs on Keras after one note line instead of failing.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from medfake.core.errors import UserError

DEFAULT_MODEL = "models:/medfake-detector@champion"
EXPORT_CACHE = Path(".medfake") / "exports"
RUNTIME_CHOICES = ("auto", "keras", "onnx", "openvino")
# "checked" (scan's default): bfloat16 where this detector's own runtime check passed, else float32.
PRECISION_CHOICES = ("checked", "auto", "float32", "bfloat16", "float16")
CHECKED = "checked"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Scorer:
    """Anything that maps HU slices (n, S, S, 1) float32 to P(fake) (n,)."""

    name: str                                   # e.g. "openvino-float32", "endpoint"
    predict: Callable[[np.ndarray], np.ndarray]
    input_size: int | None                      # S the model takes; None: whatever the slices are


def note(text: str) -> None:
    """One line on stderr, as the scan step says everything that is not the report."""
    print(f"medfake scan: note: {text}", file=sys.stderr)


def resolve_model(text: str) -> tuple[str, str]:
    """(kind, location) of ``--model``: ("mlflow", URI) or ("file", path)."""
    text = (text or DEFAULT_MODEL).strip()
    if text.startswith(("models:/", "runs:/")):
        return "mlflow", text
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir():
            if (path / "MLmodel").is_file():
                return "mlflow", str(path.resolve())
            raise UserError(f"--model {text}: folder without an MLmodel file (expected an MLflow model folder)")
        return "file", str(path)
    if _RUN_ID.match(text):
        return "mlflow", f"runs:/{text}/model"
    raise UserError(f"--model {text}: not a models:/ or runs:/ URI, an MLflow run id, nor an existing model file or folder")


def mlflow_model_info(uri: str):
    """MLflow's ModelInfo of ``uri``; a missing alias or unreadable model is one line."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from medfake.core import logged_models, tracking

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(tracking.DEFAULT_TRACKING_URI)
    try:
        return logged_models.model_info(uri)
    except MlflowException as exc:
        message = " ".join(str(exc).split())
        alias = re.match(r"^models:/([^@/]+)@(.+)$", uri)
        if alias and "alias" in message.lower() and "not found" in message.lower():
            raise UserError(f"--model {uri}: registered model {alias.group(1)} has no alias '{alias.group(2)}' "
                            f"(run `medfake promote` first, or give a run id or model path)") from None
        raise UserError(f"--model {uri}: {message[:200]}") from None
    except OSError as exc:
        raise UserError(f"--model {uri}: cannot read the model ({exc})") from None


def size_from_signature(info) -> int | None:
    """S of the signature's input (n, S, S, 1), when the logged model has one."""
    signature = getattr(info, "signature", None)
    if signature is None:
        return None
    try:
        shape = signature.inputs.inputs[0].shape
    except (AttributeError, IndexError):
        return None
    return int(shape[1]) if shape is not None and len(shape) >= 3 and shape[1] and shape[1] > 0 else None


def _exported(model, model_uuid: str, runtime: str) -> Path:
    """The ONNX/OpenVINO export of a registered Keras detector, cached under .medfake/exports/<model uuid>."""
    from medfake.models import runtime as rt

    folder = EXPORT_CACHE / model_uuid
    target = folder / f"{rt.EXPORT_STEM}{rt.RUNTIMES[runtime][1]}"
    if not target.is_file():
        staging = Path(tempfile.mkdtemp(prefix=f"{model_uuid}-", dir=_ensure(EXPORT_CACHE)))
        try:
            written = _export(model, staging, runtime)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        folder.mkdir(parents=True, exist_ok=True)
        for item in sorted(staging.iterdir(), key=lambda p: p.suffix == written.suffix):  # model file last
            os.replace(item, folder / item.name)
        staging.rmdir()
    return target


def _export(model, folder: Path, runtime: str) -> Path:
    from medfake.models import runtime as rt

    return rt.export_detector(model, folder, (runtime,))[runtime]


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _file_input_size(loaded) -> int | None:
    """S of an ONNX session's or OpenVINO compiled model's input (n, S, S, 1), when static."""
    source = loaded.source
    try:
        if hasattr(source, "get_inputs"):
            shape = source.get_inputs()[0].shape
        else:
            shape = list(source.input(0).get_partial_shape())
            shape = [d.get_length() if d.is_static else None for d in shape]
        return int(shape[1]) if isinstance(shape[1], int) else None
    except Exception:  # noqa: BLE001 - introspection only; --image-size covers the rest
        return None


def checked_precision(metrics: dict[str, float] | None, runtime: str, bfloat16_here: bool = True) -> tuple[str, str]:
    """(precision, why) for ``runtime``: bfloat16 only where the detector's train run logged a max
    |Δp| ≤ 0.01 against Keras float32 on its test slices for ``<runtime>-bfloat16`` (issue 17)."""
    from medfake.core.contract import REDUCED_PRECISION_TOLERANCE, runtime_delta_key

    key = runtime_delta_key(f"{runtime}-bfloat16")
    if runtime == "onnx":
        return "float32", "the onnx runtime runs float32 only"
    if runtime == "openvino" and not bfloat16_here:
        return "float32", "this CPU has no bfloat16 (OpenVINO lists no BF16 capability)"
    if metrics is None:
        return "float32", "no runtime check is recorded for a model file (a train run logs one)"
    if key not in metrics:
        return "float32", f"no {key} recorded by this detector's train run"
    delta = metrics[key]
    if delta <= REDUCED_PRECISION_TOLERANCE:
        return "bfloat16", f"{key} = {delta:.1e} ≤ {REDUCED_PRECISION_TOLERANCE} on this detector's test slices"
    return "float32", f"{key} = {delta:.1e} > {REDUCED_PRECISION_TOLERANCE} on this detector's test slices"


def _run_metrics(run_id: str | None) -> dict[str, float] | None:
    """The metrics of the run that logged a model (None when it has none, e.g. a model folder)."""
    if not run_id:
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return dict(mlflow.tracking.MlflowClient().get_run(run_id).data.metrics)
    except MlflowException:
        return None


def load_scorer(model: str, runtime: str = "auto", precision: str = CHECKED, endpoint: str | None = None,
                image_size: int | None = None, timeout: float = 120.0,
                notes: Callable[[str], None] = note) -> Scorer:
    """A scorer for ``--model``/``--endpoint``: the fastest installed runtime unless one is named;
    precision "checked" is bfloat16 only where the detector's own runtime check allows it."""
    if runtime not in RUNTIME_CHOICES:
        raise UserError(f"--runtime must be one of {', '.join(RUNTIME_CHOICES)}, got {runtime!r}")
    if precision not in PRECISION_CHOICES:
        raise UserError(f"--precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
    if endpoint:
        from medfake.inference import serving

        serving.base_url(endpoint)  # validates the URL
        return Scorer("endpoint", lambda batch: serving.score(endpoint, batch, timeout), image_size)
    from medfake.models import runtime as rt

    kind, location = resolve_model(model)
    if kind == "file":
        if Path(location).suffix.lower() == rt.RUNTIMES["keras"][1]:
            try:
                keras_model = rt.load_keras_file(Path(location))
            except (OSError, ValueError) as exc:
                raise UserError(f"--model {location}: not a loadable Keras model ({' '.join(str(exc).split())[:160]})") from None
            return _keras_scorer(keras_model, None, None, runtime, precision, image_size, notes)
        if precision == CHECKED:
            precision, why = checked_precision(None, rt.runtime_of_path(Path(location)))
            notes(f"precision {precision}: {why}")
        loaded = rt.load_runtime(location, runtime=runtime, precision=precision)
        return Scorer(loaded.name, loaded.predict, image_size or _file_input_size(loaded))
    info = mlflow_model_info(location)
    if "keras" not in info.flavors:
        if runtime not in ("auto", "keras"):
            raise UserError(f"--model {location} is not a Keras model (flavours: {', '.join(info.flavors)}); "
                            f"it runs as an MLflow pyfunc only, not with runtime {runtime}")
        from medfake.core import logged_models

        pyfunc = logged_models.load_pyfunc(location)
        size = image_size or size_from_signature(info)
        return Scorer("pyfunc", lambda batch: np.asarray(pyfunc.predict(batch), np.float32).reshape(-1), size)
    import medfake.models.detector  # noqa: F401 - registers the detector's own layers for loading
    from medfake.core import logged_models

    keras_model = logged_models.load_keras(location)
    return _keras_scorer(keras_model, info.model_uuid, _run_metrics(info.run_id), runtime, precision, image_size, notes)


def _keras_scorer(keras_model, model_uuid: str | None, metrics: dict[str, float] | None, runtime: str, precision: str,
                  image_size: int | None, notes: Callable[[str], None]) -> Scorer:
    """A Keras detector on the chosen runtime ("auto": the fastest installed), exported when needed.

    An export the runtime cannot take (tf2onnx without a converter for an op, a graph OpenVINO
    refuses) falls back to Keras with one note: the scan's scores are the same, only slower.
    """
    from medfake.models import runtime as rt

    size = image_size or int(keras_model.input_shape[1])
    chosen = rt.available_runtimes()[0] if runtime == "auto" else runtime
    why = None  # with precision "checked": the reason for the precision chosen, said once it runs
    if precision == CHECKED:
        precision, why = checked_precision(metrics, chosen, rt.openvino_has_bfloat16())
    if chosen != "keras":
        rt.check_options(chosen, precision)  # not installed, or a precision it lacks: the user's to fix
        try:
            if model_uuid:
                loaded = rt.load_runtime(_exported(keras_model, model_uuid, chosen), precision=precision)
            else:  # a local .keras file: export, load into memory, drop the files
                with tempfile.TemporaryDirectory(prefix="medfake-export-", ignore_cleanup_errors=True) as folder:
                    loaded = rt.load_runtime(_export(keras_model, Path(folder), chosen), precision=precision)
            if why:
                notes(f"precision {precision}: {why}")
            return Scorer(loaded.name, loaded.predict, size)
        except Exception as exc:  # noqa: BLE001 - any converter/runtime failure: Keras scores the same
            reason = " ".join(str(exc).split())[:160] or type(exc).__name__
            notes(f"runtime {chosen} cannot run this model ({reason}); scoring with keras instead")
            if why:
                precision, why = checked_precision(metrics, "keras")
    loaded = rt.load_runtime(keras_model, runtime="keras", precision=precision)
    if why:
        notes(f"precision {precision}: {why}")
    return Scorer(loaded.name, loaded.predict, size)
