"""How far each fast runtime and precision moves a trained detector's scores (issue 17).

After training, the detector's test slices are scored by Keras float32 and by every other way
``scan`` could run it: Keras bfloat16, and OpenVINO float32 and bfloat16 from one export (ONNX
Runtime instead when OpenVINO is not installed; it runs float32 only). The max |Δp| of each is
logged as ``max_abs_dp/<runtime>-<precision>``. scan's default precision reads these: reduced
precision only where this detector's own figure is ≤ 0.01. Random weights cannot stand in for
this: untrained networks amplify rounding far more (reports/benchmarks/latency-cpu.md).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medfake.core.contract import runtime_delta_key


def _scores(predict: Callable[[np.ndarray], np.ndarray], images, batch_size: int) -> np.ndarray:
    out = [np.asarray(predict(np.asarray(images[i:i + batch_size], np.float32)), np.float32).reshape(-1)
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def runtime_deltas(model, images, batch_size: int, notes: Callable[[str], None] = print) -> dict[str, float]:
    """{runtime name: max |p − p_keras_float32|} over ``images`` (HU slices, n × S × S × 1).

    A runtime whose export or load fails is left out with one note: the scan then keeps float32.
    """
    from medfake.models import runtime as rt
    from medfake.models.detector import with_precision

    if len(images) == 0:
        return {}
    reference_model = rt.as_float32(model)
    reference = _scores(reference_model.predict_on_batch, images, batch_size)
    deltas = {"keras-bfloat16": _scores(with_precision(reference_model, "bfloat16").predict_on_batch, images, batch_size)}
    exported = next((name for name in rt.available_runtimes() if name != "keras"), None)
    if exported is not None:
        folder = Path(tempfile.mkdtemp(prefix="medfake-runtime-check-"))
        try:
            path = rt.export_detector(reference_model, folder, (exported,))[exported]
            for precision in ("float32", "bfloat16") if exported == "openvino" else ("float32",):
                loaded = rt.load_runtime(path, precision=precision)
                deltas.setdefault(loaded.name, _scores(loaded.predict, images, batch_size))
        except Exception as exc:  # noqa: BLE001 - a converter gap: scan falls back to float32 for this runtime
            notes(f"runtime check: {exported} could not run this detector ({' '.join(str(exc).split())[:160]})")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return {name: float(np.max(np.abs(scores - reference))) for name, scores in deltas.items()}


def log_runtime_deltas(model, images, batch_size: int) -> dict[str, float]:
    """Measure :func:`runtime_deltas` and log each as ``max_abs_dp/<runtime>``; returns the logged metrics."""
    import mlflow

    metrics = {runtime_delta_key(name): value for name, value in runtime_deltas(model, images, batch_size).items()}
    if metrics:
        mlflow.log_metrics(metrics)
    return metrics
