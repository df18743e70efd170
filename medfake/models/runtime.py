"""Fast CPU inference of a detector behind one ``predict(hu_batch) -> probabilities``.

Three runtimes: Keras itself, ONNX Runtime and OpenVINO (the last two from Keras 3's
``model.export``; optional extra ``medfake[runtime]``, imported lazily). On 2 CPU cores at 512²
OpenVINO is ~2–4× faster than Keras float32 (DESIGN §6). OpenVINO's default CPU precision may be
bf16 on CPUs with avx512_bf16/AMX (probabilities differ by up to ~0.02); ``precision="float32"``
asks it for f32 (``INFERENCE_PRECISION_HINT``), which matches Keras within 1e-4.

A detector trained in bfloat16/float16 (mixed precision) is exported as a float32 copy: tf2onnx
writes bfloat16 convolutions ONNX Runtime refuses and OpenVINO cannot convert its constants, so
the exported graph is float32 throughout and the runtime picks its own inference precision.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medfake.core.errors import UserError

INSTALL_HINT = "pip install 'medfake[runtime]'"
# runtime → (python module that provides it, file suffix of its exported model)
RUNTIMES: dict[str, tuple[str, str]] = {
    "openvino": ("openvino", ".xml"),
    "onnx": ("onnxruntime", ".onnx"),
    "keras": ("keras", ".keras"),
}
AUTO_ORDER = ("openvino", "onnx", "keras")  # fastest first on CPU
EXPORT_FORMATS = {"onnx": "onnx", "openvino": "openvino"}  # our name → keras export format
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
OPENVINO_HINTS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
EXPORT_STEM = "detector"


@dataclass
class Runtime:
    """A loaded detector: ``predict`` maps HU batches (n,S,S,1) float32 to probabilities (n,)."""

    name: str  # e.g. "keras-float32", "onnx-float32", "openvino-bf16"
    runtime: str
    precision: str
    _predict: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    source: Any = field(default=None, repr=False)

    def predict(self, hu_batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(hu_batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[-1] != 1:
            raise UserError(f"detector input must be (n, size, size, 1) HU, got shape {batch.shape}")
        return np.asarray(self._predict(batch), dtype=np.float32).reshape(-1)


def available_runtimes() -> list[str]:
    """Installed runtimes, fastest first."""
    return [name for name in AUTO_ORDER if importlib.util.find_spec(RUNTIMES[name][0]) is not None]


def openvino_has_bfloat16() -> bool:
    """Whether OpenVINO's CPU plugin computes in bfloat16 here (AVX512_BF16 or AMX: "BF16" among its
    OPTIMIZATION_CAPABILITIES); elsewhere a bfloat16 hint silently runs float32."""
    if importlib.util.find_spec(RUNTIMES["openvino"][0]) is None:
        return False
    return "BF16" in require("openvino").Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def require(runtime: str):
    """The runtime's Python module; UserError naming the extra when it is not installed."""
    module_name = RUNTIMES[runtime][0]
    if importlib.util.find_spec(module_name) is None:
        raise UserError(f"runtime {runtime} needs the {module_name} package: {INSTALL_HINT}")
    if runtime == "openvino":
        _openvino_offline()
    return importlib.import_module(module_name)


def _openvino_offline() -> None:
    """Keep OpenVINO's model converter from sending usage events while medfake exports a detector.

    ``openvino.tools.ovc`` reports each conversion to Google Analytics through ``openvino_telemetry``
    (installed with openvino; on unless a consent file in ~/intel says no, or CI=true): a forked process
    per event, waited on for up to 3 s when nobody answers. medfake runs offline next to patient data,
    and a fork is unsafe under JAX. Without an importable ``openvino_telemetry`` the converter uses its
    own no-op stub (openvino/tools/ovc/telemetry_stub.py); only this process is affected.
    """
    sys.modules.setdefault("openvino_telemetry", None)


def check_options(runtime: str, precision: str) -> None:
    """UserError for a runtime that is unknown or not installed, or a precision it cannot run."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if runtime not in RUNTIMES:
        raise UserError(f"runtime must be auto or one of {', '.join(RUNTIMES)}, got {runtime!r}")
    require(runtime)
    if runtime == "onnx" and precision not in ("auto", "float32"):
        raise UserError(f"the onnx runtime runs float32 only, got precision {precision}")


def export_detector(model, out_dir: str | Path, formats: Sequence[str] = ("onnx", "openvino")) -> dict[str, Path]:
    """Export a Keras detector to ``out_dir/detector.onnx`` and/or ``out_dir/detector.xml`` (+ .bin).

    The batch dimension stays dynamic; a reduced-precision detector is exported as its float32
    copy (see the module note). Returns {format: path}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = as_float32(model)
    # Keras exports only models that have run once; one slice through it costs a second at most.
    model(np.zeros((1, *model.input.shape[1:]), dtype=np.float32), training=False)
    paths: dict[str, Path] = {}
    for fmt in formats:
        if fmt not in EXPORT_FORMATS:
            raise UserError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
        require(fmt)
        path = out / f"{EXPORT_STEM}{RUNTIMES[fmt][1]}"
        with _quiet_converters(), _constant_normalization(model):
            model.export(str(path), format=EXPORT_FORMATS[fmt], verbose=False)
        if fmt == "onnx":
            _check_onnx_ops(path, model.name)
        paths[fmt] = path
    return paths


def as_float32(model):
    """``model`` itself when every layer computes in float32, else a float32 copy (weights cast).

    Mixed-precision variables are float32 already; any that are not are cast, so the copy's graph
    holds no bfloat16/float16 tensor at all.
    """
    import keras

    if all(layer.dtype_policy.compute_dtype == "float32" and layer.dtype_policy.variable_dtype == "float32"
           for layer in _all_layers(model)):
        return model
    from medfake.models.detector import with_precision

    copy = with_precision(model, "float32")
    copy.set_weights([np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(w, "float32")))
                      for w in model.weights])
    return copy


def _check_onnx_ops(path: Path, model_name: str) -> None:
    """Refuse an ONNX export that kept TensorFlow-only ops (ONNX Runtime would not load it).

    tf2onnx cannot convert the XLA-compiled function Keras uses for grouped convolutions on CPU
    (RegNet) nor the exact GELU's Erfc (ConvNeXt); OpenVINO converts both.
    """
    if importlib.util.find_spec("onnx") is None:
        return
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    foreign = sorted({node.op_type for node in graph.node
                      if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type)})
    if foreign:
        path.unlink(missing_ok=True)
        raise UserError(
            f"ONNX export of {model_name} is not possible: tf2onnx left TensorFlow ops {', '.join(foreign)}"
            " (grouped convolutions and exact GELU do this); use the openvino runtime"
        )


def _all_layers(model) -> Iterator:
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


@contextlib.contextmanager
def _constant_normalization(model) -> Iterator[None]:
    """Give Normalization layers numpy mean/variance while exporting (EfficientNet, ConvNeXt have one).

    Keras keeps them as tensors made at build time; the ONNX converter turns such captured tensors
    into graph inputs that nobody feeds. Numpy values become constants of the traced graph.
    """
    import keras

    swapped = [(layer, layer.mean, layer.variance) for layer in _all_layers(model)
               if isinstance(layer, keras.layers.Normalization) and layer.mean is not None]
    try:
        for layer, mean, variance in swapped:
            layer.mean, layer.variance = keras.ops.convert_to_numpy(mean), keras.ops.convert_to_numpy(variance)
        yield
    finally:
        for layer, mean, variance in swapped:
            layer.mean, layer.variance = mean, variance


@contextlib.contextmanager
def _quiet_converters() -> Iterator[None]:
    """Silence tf2onnx's tracebacks for optimisations it skips (harmless) and converter warnings."""
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def runtime_of_path(path: Path) -> str:
    for name, (_, suffix) in RUNTIMES.items():
        if path.suffix.lower() == suffix:
            return name
    raise UserError(f"{path}: unknown model file type (expected .keras, .onnx or .xml)")


def load_runtime(path_or_model, runtime: str = "auto", precision: str = "auto", jit_compile: bool = False) -> Runtime:
    """Load a detector for inference with ``runtime`` (auto | keras | onnx | openvino).

    ``path_or_model``: a Keras model or a ``.keras`` / ``.onnx`` / ``.xml`` file. "auto" picks the
    fastest installed runtime (exporting a Keras model into a temporary folder when needed);
    for a file it is the file's own runtime. ``precision`` "auto" is the runtime's default on this
    device (Keras and ONNX: the model's own / float32; OpenVINO: its CPU default, bf16 with AMX).
    """
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if runtime != "auto" and runtime not in RUNTIMES:
        raise UserError(f"runtime must be auto or one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if isinstance(path_or_model, (str, Path)):
        path = Path(path_or_model)
        if not path.exists():
            raise UserError(f"model file {path} does not exist")
        file_runtime = runtime_of_path(path)
        if runtime == "auto" or runtime == file_runtime:
            return _LOADERS[file_runtime](path, precision, jit_compile)
        if file_runtime != "keras":
            raise UserError(f"{path} is a {file_runtime} model; it cannot run with runtime {runtime}")
        path_or_model = load_keras_file(path)
    model = path_or_model
    chosen = available_runtimes()[0] if runtime == "auto" else runtime
    if chosen == "keras":
        return _load_keras(model, precision, jit_compile)
    export_root = tempfile.mkdtemp(prefix="medfake-export-")
    try:
        paths = export_detector(model, export_root, formats=(chosen,))
        return _LOADERS[chosen](paths[chosen], precision, jit_compile)
    finally:  # the runtime holds the model in memory (or a mapping that outlives the file)
        shutil.rmtree(export_root, ignore_errors=True)


def load_keras_file(path: Path):
    """A saved ``.keras`` detector without its optimizer (inference never needs it, and Keras would
    warn that it skips the optimizer's variables); importing medfake.models.detector first registers
    its custom layers."""
    import keras

    import medfake.models.detector  # noqa: F401

    return keras.saving.load_model(path, compile=False)


def _load_keras(model_or_path, precision: str, jit_compile: bool) -> Runtime:
    from medfake.models.detector import with_precision

    model = load_keras_file(model_or_path) if isinstance(model_or_path, Path) else model_or_path
    label = precision if precision != "auto" else _keras_precision(model)
    if label != _keras_precision(model) or jit_compile:  # a copy: the caller's model stays as it is
        model = with_precision(model, label)
    if jit_compile:
        model.compile(jit_compile=True)
        label += "-jit"
    return Runtime(f"keras-{label}", "keras", label, lambda batch: model.predict_on_batch(batch), model)


def _has_backbone(model) -> bool:
    return any(layer.name == "backbone" for layer in model.layers)


def _keras_precision(model) -> str:
    policy = model.get_layer("backbone").dtype_policy if _has_backbone(model) else model.dtype_policy
    return {"bfloat16": "bfloat16", "float16": "float16"}.get(policy.compute_dtype, "float32")


def _load_onnx(path: Path, precision: str, jit_compile: bool) -> Runtime:
    if precision not in ("auto", "float32"):
        raise UserError(f"the onnx runtime runs float32 only, got precision {precision}")
    ort = require("onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return Runtime("onnx-float32", "onnx", "float32", lambda batch: session.run(None, {input_name: batch})[0], session)


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def _signal_stack_kept() -> Iterator[None]:
    """Give the calling thread back the alternate signal stack (sigaltstack(2)) it had before.

    Measured with OpenVINO 2026.4 on an AVX512_BF16 CPU: each compiled model points the compiling
    thread's alternate signal stack at 11.5 kB of its own and, when freed, puts back the stack it saw.
    Freed out of order (runtime_check frees the float32 model after loading the bfloat16 one), the
    thread was left on freed memory; Python installs its handlers with SA_ONSTACK, so the next SIGTERM
    killed the process with SIGSEGV instead of ending its MLflow run KILLED.
    """
    try:
        sigaltstack = ctypes.CDLL(None).sigaltstack
    except (OSError, AttributeError):  # not a POSIX libc: nothing to keep
        yield
        return
    before = _SignalStack()
    saved = sigaltstack(None, ctypes.byref(before)) == 0
    try:
        yield
    finally:
        if saved:
            sigaltstack(ctypes.byref(before), None)


def _load_openvino(path: Path, precision: str, jit_compile: bool) -> Runtime:
    ov = require("openvino")
    config = {} if precision == "auto" else {"INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision]}
    with _signal_stack_kept():
        compiled = ov.Core().compile_model(str(path), "CPU", config)
        request = compiled.create_infer_request()
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type, e.g. bf16
    actual = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)

    def predict(batch: np.ndarray) -> np.ndarray:
        request.infer({0: batch})
        return request.get_output_tensor(0).data.copy()

    label = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}.get(actual, actual)
    return Runtime(f"openvino-{label}", "openvino", label, predict, compiled)


_LOADERS: dict[str, Callable[[Path, str, bool], Runtime]] = {
    "keras": _load_keras,
    "onnx": _load_onnx,
    "openvino": _load_openvino,
}
