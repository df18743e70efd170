"""``precision: auto`` and ``jit_compile: auto``: what a backbone trains in on a device.

On CUDA GPUs: float16 mixed precision and XLA. On CPUs: float32. ``medfake bench train`` on this
project's 2-core Intel Xeon (reports/benchmarks/train.md, one loaded run) found bfloat16 training at
best 1.06× faster (Xception) and slower for ResNet50V2 (0.86×), DenseNet121 (0.88×) and
MobileNetV3Large (0.53×); and the same-seed quickstart (Xception from scratch, phantom, 2026-12-02)
reached test AUC 0.545 in bfloat16 against 0.788 in float32 — bfloat16's 8-bit mantissa (about
1.5-3 HU after the lung window) blurs the faint tamper texture the detector has to learn. XLA
(``jit_compile``) made CPU training several times slower, so it is off on CPUs.
"""

from __future__ import annotations


def accelerator() -> str:
    """``gpu`` when the Keras backend sees a CUDA GPU, else ``cpu``."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
        if backend == "jax":
            import jax

            return "gpu" if any(d.platform == "gpu" for d in jax.devices()) else "cpu"
        if backend == "torch":
            import torch

            return "gpu" if torch.cuda.is_available() else "cpu"
    except Exception:  # a broken accelerator stack means CPU
        return "cpu"
    return "cpu"


def choose(precision: str, jit_compile: str, backbone: str, device: str | None = None) -> tuple[str, bool]:
    """(precision, jit) actually used for a backbone; explicit choices are kept as given."""
    device = device or accelerator()
    if precision == "auto":
        precision = "float16" if device == "gpu" else "float32"
    jit = {"true": True, "false": False}.get(str(jit_compile).lower(), device == "gpu")
    return precision, jit
