"""The machine a step runs on, and how fast one inference step is on it (the study's Table 3 method)."""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from medfake.core.errors import UserError


def measure_latency(predict_fn: Callable, batch, steps: int = 10, warmup: int = 2) -> tuple[float, float]:
    """Mean and std (sample; 0 for one step) in ms of ``steps`` timed calls after ``warmup`` untimed ones.

    The study's Table 3 method: mean ± std of the inference-step time over 10 runs.
    """
    times_ms = interleaved_step_times_ms([predict_fn], batch, steps, warmup)[0]
    return float(times_ms.mean()), float(times_ms.std(ddof=1)) if steps > 1 else 0.0


def interleaved_step_times_ms(predict_fns: Sequence[Callable], batch, steps: int, warmup: int) -> np.ndarray:
    """Time ``steps`` calls of each function, taking turns (step 1 of each, then step 2, …); (functions, steps) ms.

    On shared cores the load changes from minute to minute; taking turns exposes every runtime to the
    same load, so the ratios between rows stay fair even when absolute times are inflated.
    """
    if steps < 1 or warmup < 0:
        raise UserError(f"latency needs steps >= 1 and warmup >= 0, got steps={steps} warmup={warmup}")
    for predict in predict_fns:
        for _ in range(warmup):
            predict(batch)
    times_ms = np.empty((len(predict_fns), steps))
    for step in range(steps):
        for index, predict in enumerate(predict_fns):
            start = time.perf_counter()
            predict(batch)
            times_ms[index, step] = (time.perf_counter() - start) * 1000.0
    return times_ms


def cpu_description() -> str:
    """CPU model (``/proc/cpuinfo`` "model name") and the cores this process may use."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores"


def device_label() -> tuple[str, str]:
    """("cpu", CPU description) or ("gpu-<name>", GPU name) for the Keras baseline's device."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            gpu_name = details.get("device_name", "gpu")
            slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
            return f"gpu-{slug}", f"{gpu_name} (ONNX Runtime / OpenVINO rows run on the CPU: {cpu_description()})"
    elif keras.backend.backend() == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        if gpus:
            slug = re.sub(r"[^a-z0-9]+", "-", gpus[0].device_kind.lower()).strip("-")
            return f"gpu-{slug}", f"{gpus[0].device_kind}, Keras on JAX (host: {cpu_description()})"
    return "cpu", cpu_description()


def device_name() -> str:
    """The device a step ran on, for the ``medfake.device`` tag (``cpu: <model>, N cores`` or the GPU)."""
    kind, description = device_label()
    return f"{kind}: {description}"
