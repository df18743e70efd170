"""What a train run logs about its model and data besides the evaluation: the detector as an MLflow
Keras model (signature, serving example), its latency and size (study Table 3), the dataset input."""

from __future__ import annotations

import numpy as np

from medfake.data.cache import Dataset


def latency(predict_fn, batch: np.ndarray, steps: int) -> tuple[float, float]:
    """Mean and standard deviation (ms) of one inference step on ``batch`` (study Table 3)."""
    from medfake.core.device import measure_latency

    return measure_latency(predict_fn, batch, steps=steps, warmup=2)


def efficiency_metrics(params_m: float, mean_ms: float, std_ms: float, batch: int) -> dict[str, float]:
    """Size and speed of a model: millions of parameters, ms per step of ``batch`` slices, slices/s."""
    return {"params_m": params_m, "latency_ms_mean": mean_ms, "latency_ms_std": std_ms,
            "inference_images_per_s": batch / (mean_ms / 1000.0) if mean_ms > 0 else 0.0}


def log_dataset_input(dataset: Dataset) -> None:
    """The run's dataset as an MLflow input (manifest, digest, label column), context ``training``."""
    import mlflow

    ds = mlflow.data.from_pandas(dataset.manifest, source=str(dataset.path.resolve()),
                                 name=f"medfake-{dataset.digest[:8]}", digest=dataset.digest, targets="label")
    mlflow.log_input(ds, context="training")


def model_requirements() -> list[str]:
    """What a logged detector needs to load: keras and its backend (no medfake: built-in layers)."""
    from importlib.metadata import version

    import keras

    backend = keras.backend.backend()
    names = ["keras", {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend, backend)]
    return [f"{name}=={version(name)}" for name in names]


def log_detector_model(model, example: np.ndarray) -> None:
    """The detector in the MLflow Keras flavour, with a signature and a scoring-server example.

    The input example goes in as ``serving_input_example.json`` beside the model: MLflow's Keras
    flavour fails when given ``input_example`` (mlflow/mlflow#16183, open in 3.17).
    """
    import json

    import mlflow
    from mlflow.models import infer_signature

    probabilities = np.asarray(model.predict_on_batch(example), np.float32)
    signature = infer_signature(example, probabilities)
    # Requirements named here: MLflow's inference of them fails for Keras 3 and costs ~20 s.
    mlflow.keras.log_model(model, name="model", signature=signature, pip_requirements=model_requirements())
    mlflow.log_text(json.dumps({"inputs": example.tolist()}), "serving_input_example.json")
