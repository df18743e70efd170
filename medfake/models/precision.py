"""``precision: auto`` and ``jit_compile: auto``: what was measured fastest for a backbone on a device.

On CUDA GPUs: float16 mixed precision and XLA. On CPUs: ``medfake bench train`` on this project's
2-core Intel Xeon (reports/benchmarks/train.md, one loaded run) found bfloat16 training faster only
for Xception (1.06×) and slower for ResNet50V2 (0.86×), DenseNet121 (0.88×) and MobileNetV3Large
(0.53×), unlike the earlier AMD EPYC measurements in the design notes; so ``auto`` keeps float32
elsewhere. XLA (``jit_compile``) made CPU training several times slower, so it is off on CPUs.
"""

from __future__ import annotations

# Backbones whose phase-2 training measured faster in bfloat16 than float32 on the CPU.
CPU_BFLOAT16_FASTER = frozenset({"Xception"})


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
        if device == "gpu":
            precision = "float16"
        else:
            precision = "bfloat16" if backbone in CPU_BFLOAT16_FASTER else "float32"
    jit = {"true": True, "false": False}.get(str(jit_compile).lower(), device == "gpu")
    return precision, jit
