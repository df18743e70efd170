"""The ensemble detector: k trained detectors behind one HU input, combined into one P(tampered).

The study's discussion proposes "hybrid architectures that combine DCNNs capturing different
semantics"; this is the simplest such hybrid, as one Keras functional model::

    "hu" (S,S,1) ─┬─ "member_1_<model>" → logit_1 ─┐
                  ├─ …                              ├─ combine → "probability" (N,1)
                  └─ "member_k_<model>" → logit_k ─┘

Each member is its detector up to the input of its "probability" layer plus a float32 Dense(1) with
that layer's weights and no activation: the member's logit exactly, without log(p) of a saturated
sigmoid (float32 sigmoid is 1.0 from a logit of ~17 up). Combiners:

- ``mean``: sigmoid per member, ``Average`` of the probabilities;
- ``logit-mean``: ``Average`` of the logits, then sigmoid (the geometric mean of the odds);
- ``stacking``: a frozen ``Dense(1, sigmoid)`` over the concatenated logits, with the weights of a
  logistic regression fitted elsewhere (on validation scores only).

Every layer is a Keras built-in, as in ``medfake.models.detector``, so the saved model loads in
``mlflow models serve``, exports to ONNX/OpenVINO and scans like a single detector. Members are
renamed ``member_<i>_<model>`` so two members never share a name, even of the same backbone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import keras
import numpy as np

from medfake.core.contract import ENSEMBLE_COMBINERS as COMBINERS
from medfake.core.errors import UserError
from medfake.models.detector import INPUT_NAME, OUTPUT_NAME

LOGIT_NAME = "logit"
MEMBER_PREFIX = "member_"


def member_name(index: int, model: str) -> str:
    """``member_<index>_<model>`` in lower case, safe as a Keras (and TF/ONNX) name."""
    slug = re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_") or "model"
    return f"{MEMBER_PREFIX}{index}_{slug}"


def logit_model(detector: keras.Model, name: str) -> keras.Model:
    """The detector from its "hu" input to the logit its "probability" layer turns into P(fake).

    Shares every layer (and weight) with ``detector``; only the last Dense is a new float32 copy of
    the output layer without its sigmoid.
    """
    try:
        output = detector.get_layer(OUTPUT_NAME)
    except ValueError:
        raise UserError(f"model {detector.name} has no '{OUTPUT_NAME}' layer: not a medfake detector") from None
    if not isinstance(output, keras.layers.Dense) or output.units != 1:
        raise UserError(f"model {detector.name}: layer '{OUTPUT_NAME}' is not a Dense(1) sigmoid output")
    logit_layer = keras.layers.Dense(1, activation=None, dtype="float32", name=LOGIT_NAME)
    logit = logit_layer(output.input)
    logit_layer.set_weights(output.get_weights())
    return keras.Model(detector.input, logit, name=name)


def build_ensemble(members: Sequence[keras.Model], names: Sequence[str], combiner: str,
                   stacking_weights: np.ndarray | None = None, stacking_bias: float | None = None,
                   name: str = "medfake_ensemble") -> keras.Model:
    """One model from HU slices (S,S,1) to P(fake) (N,1) over ``members`` (trained detectors).

    ``names`` are the members' model names (registry spelling), for the member layer names.
    ``stacking`` takes ``stacking_weights`` (k,) and ``stacking_bias``, the logistic regression's
    coefficients on the members' logits in member order, or neither: then the output layer stays
    unset until :func:`set_stacking` (the fit needs the members' logits, which the model gives).
    """
    if combiner not in COMBINERS:
        raise UserError(f"--combiner must be one of {', '.join(COMBINERS)}, got '{combiner}'")
    if len(members) < 2:
        raise UserError(f"an ensemble needs at least 2 members, got {len(members)}")
    if len(names) != len(members):
        raise ValueError(f"{len(members)} members but {len(names)} names")
    sizes = {tuple(member.input_shape[1:]) for member in members}
    if len(sizes) != 1:
        raise UserError(f"members take different input shapes: {', '.join(str(s) for s in sorted(sizes))}")
    shape = sizes.pop()
    hu = keras.Input(shape=shape, dtype="float32", name=INPUT_NAME)
    logits = []
    for index, (member, model_name) in enumerate(zip(members, names), start=1):
        member_logit = logit_model(member, member_name(index, model_name))
        logits.append(member_logit(hu))
    if combiner == "mean":
        probabilities = [keras.layers.Activation("sigmoid", dtype="float32", name=f"probability_{i}")(logit)
                         for i, logit in enumerate(logits, start=1)]
        probability = keras.layers.Average(dtype="float32", name=OUTPUT_NAME)(probabilities)
    elif combiner == "logit-mean":
        mean_logit = keras.layers.Average(dtype="float32", name="mean_logit")(logits)
        probability = keras.layers.Activation("sigmoid", dtype="float32", name=OUTPUT_NAME)(mean_logit)
    else:
        stacked = keras.layers.Concatenate(axis=-1, dtype="float32", name="stacked_logits")(logits)
        combine = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=OUTPUT_NAME, trainable=False)
        probability = combine(stacked)
    model = keras.Model(hu, probability, name=name)
    if combiner == "stacking":
        if (stacking_weights is None) != (stacking_bias is None):
            raise ValueError("stacking takes both the fitted weights and the bias, or neither")
        if stacking_weights is not None:
            set_stacking(model, stacking_weights, stacking_bias)
    return model


def set_stacking(ensemble: keras.Model, weights, bias: float) -> None:
    """Put a logistic regression's coefficients (one per member logit, member order) and intercept
    into a stacking ensemble's frozen output layer."""
    layer = ensemble.get_layer(OUTPUT_NAME)
    members = len(member_logit_models(ensemble))
    values = np.asarray(weights, np.float32).reshape(-1)
    if not isinstance(layer, keras.layers.Dense) or values.size != members:
        raise ValueError(f"{values.size} stacking weights for a {layer.__class__.__name__} output over {members} members")
    layer.set_weights([values.reshape(-1, 1), np.array([bias], np.float32)])


def member_logit_models(ensemble: keras.Model) -> list[keras.Model]:
    """The ensemble's member sub-models (HU → logit), in member order."""
    members = [layer for layer in ensemble.layers if layer.name.startswith(MEMBER_PREFIX)]
    return sorted(members, key=lambda layer: int(layer.name[len(MEMBER_PREFIX):].split("_", 1)[0]))

