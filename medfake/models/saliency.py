"""Where a detector looks: Grad-CAM on its last convolutional block, and occlusion sensitivity.

Grad-CAM (Selvaraju et al., 2017): the activations ``A`` of the backbone's last convolutional block
(the layer named by the registry's ``cam_layer``), weighted per channel by the spatial mean of
d logit(fake) / dA, summed over channels, ReLU, resized to the input like the data was. The logit
(not P(fake)) is differentiated, because a confident detector's sigmoid saturates and its gradient
vanishes in float32. Gradients come from the Keras 3 backend itself: ``tf.GradientTape`` under
TensorFlow (the default, tested), ``jax.grad`` under JAX (written for it, not run in this
checkout: jax is not installed), ``torch.autograd.grad`` under PyTorch (likewise untested).

Occlusion sensitivity (Zeiler & Fergus, 2014) needs only a ``predict`` function, so it also runs on
ONNX/OpenVINO exports and serving endpoints: a patch of the CT window's background value (the HU
that the window maps to black) slides over the slice and the drop in P(fake) is recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from medfake.core.errors import UserError
from medfake.io.transforms import resize
from medfake.models.detector import BACKBONE_NAME
from medfake.models.registry import list_backbones

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass
class CamModel:
    """A detector split at its Grad-CAM layer: ``body`` (input → activations) and ``logit`` (activations → logit)."""

    body: keras.Model
    logit: Callable
    layer: str
    input_size: int
    compiled: Callable | None = None   # the backend's compiled map function, made on first use
    sigmoid_head: bool = False         # ``logit`` is before the output's sigmoid (P(fake) = sigmoid(logit))


def _cam_layer_of(backbone: keras.Model, model_name: str) -> str:
    """The registry's cam_layer of a detector: by its name (``medfake_<backbone>``), else the first
    registry layer name found in the backbone (a saved detector keeps its layer names)."""
    names = {layer.name for layer in backbone.layers}
    specs = list_backbones()
    named = [spec for spec in specs if model_name.lower() == f"medfake_{spec.name.lower()}"]
    for spec in named + specs:
        if spec in named and not spec.cam_layer:
            return backbone.layers[-1].name
        if spec.cam_layer in names:
            return spec.cam_layer
    raise UserError(f"model {backbone.name}: none of the registry's Grad-CAM layers is in it")


def _is_sigmoid_dense(layer) -> bool:
    activation = getattr(layer, "activation", None)
    return isinstance(layer, keras.layers.Dense) and getattr(activation, "__name__", "") == "sigmoid"


def _logit_fn(tail: list, final) -> Callable:
    """activations → the fake logit: ``tail`` layers, then the sigmoid Dense without its sigmoid."""

    def logit(a):
        x = a
        for layer in tail:
            x = layer(x, training=False)
        if _is_sigmoid_dense(final):
            x = ops.cast(x, "float32")
            return ops.matmul(x, ops.cast(final.kernel, "float32")) + ops.cast(final.bias, "float32")
        return ops.cast(final(x, training=False), "float32")

    return logit


def cam_model(model: keras.Model, layer: str | None = None) -> CamModel:
    """Split a detector (``build_detector``'s layout, backbone nested) or any functional model.

    ``layer`` names the Grad-CAM layer; by default the registry's ``cam_layer`` inside the nested
    "backbone". A plain model (no nested backbone) needs ``layer``, and the layers after it must form
    a chain to the output. A model without a convolutional block is a UserError.
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "layers"):
        raise UserError(f"{type(model).__name__} is not a Keras model: Grad-CAM needs a convolutional detector")
    names = [item.name for item in model.layers]
    size = int(model.input_shape[1])
    if BACKBONE_NAME in names:
        backbone = model.get_layer(BACKBONE_NAME)
        name = layer or _cam_layer_of(backbone, model.name)
        position = names.index(BACKBONE_NAME)
        inner = keras.Model(backbone.input, backbone.get_layer(name).output)
        body = keras.Model(model.input, inner(model.layers[position - 1].output), name=f"{model.name}_cam_body")
        after = model.layers[position + 1:]
        tail = [] if backbone.layers[-1].name == name else [keras.Model(backbone.get_layer(name).output, backbone.output)]
        return CamModel(body, _logit_fn(tail + list(after[:-1]), after[-1]), name, size,
                        sigmoid_head=_is_sigmoid_dense(after[-1]))
    if layer is None:
        raise UserError(f"model {model.name} has no convolutional block named '{BACKBONE_NAME}' (is it the "
                        "histogram baseline?); Grad-CAM needs a CNN detector")
    if layer not in names:
        raise UserError(f"model {model.name} has no layer {layer!r}")
    target = model.get_layer(layer)
    if len(target.output.shape) != 4:
        raise UserError(f"layer {layer!r} of model {model.name} is not a convolutional feature map "
                        f"(output shape {tuple(target.output.shape)})")
    body = keras.Model(model.input, target.output, name=f"{model.name}_cam_body")
    after = model.layers[names.index(layer) + 1:]
    return CamModel(body, _logit_fn(list(after[:-1]), after[-1]), layer, size, sigmoid_head=_is_sigmoid_dense(after[-1]))


def _gradients(logit: Callable, a):
    """(logit(a), d sum(logit(a)) / da) with the backend's own autodiff; samples are independent (inference mode)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        a = tf.convert_to_tensor(a)
        with tf.GradientTape() as tape:
            tape.watch(a)
            value = logit(a)
            target = tf.reduce_sum(value)
        return value, tape.gradient(target, a)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def total(x):
            value = logit(x)
            return jnp.sum(value), value

        (_, value), grad = jax.value_and_grad(total, has_aux=True)(a)
        return value, grad
    if backend == "torch":
        import torch

        a = a.detach().requires_grad_(True)
        value = logit(a)
        (grad,) = torch.autograd.grad(value.sum(), a)
        return value, grad
    raise UserError(f"Grad-CAM needs the tensorflow, jax or torch Keras backend, not {backend}")


def grad_cam(model: keras.Model | CamModel, images: np.ndarray, batch_size: int = 16,
             positive: bool = True) -> np.ndarray:
    """Grad-CAM maps (n, S, S) float32 of HU slices (n, S, S, 1) for the fake class.

    Maps are resized to the input with the data's own resize (pixel centres aligned), so map pixel
    (row, col) is input pixel (row, col). With ``positive`` (Grad-CAM's ReLU) a map is ≥ 0 and all
    zeros where no location raised the logit; ``positive=False`` keeps the signed map.
    """
    return grad_cam_scores(model, images, batch_size, positive)[0]


def grad_cam_scores(model: keras.Model | CamModel, images: np.ndarray, batch_size: int = 16,
                    positive: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps (as :func:`grad_cam`) and P(fake) (n,) of the same pass: the map needs the
    forward pass anyway, so the scores cost nothing more. Pass a :class:`CamModel` to keep its
    compiled function across calls (one trace per detector, not per call)."""
    split = model if isinstance(model, CamModel) else cam_model(model)
    x = np.asarray(images, np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if split.compiled is None:
        split.compiled = _compile(split, x.shape[1:])
    out = np.zeros(x.shape[:3], np.float32)
    scores = np.zeros(len(x), np.float32)
    for start in range(0, len(x), max(int(batch_size), 1)):
        chunk = x[start:start + batch_size]
        cam, logit = (ops.convert_to_numpy(value) for value in split.compiled(chunk))
        out[start:start + len(chunk)] = resize(cam, x.shape[1]) if cam.shape[1:] != x.shape[1:3] else cam
        logit = np.asarray(logit, np.float64).reshape(len(chunk), -1)[:, -1]
        scores[start:start + len(chunk)] = 1.0 / (1.0 + np.exp(-logit)) if split.sigmoid_head else logit
    return (np.maximum(out, 0.0) if positive else out), scores


def _compile(split: CamModel, shape: tuple[int, ...]) -> Callable:
    """(n, S, S, 1) → (signed Grad-CAM (n, h, w) at the layer's resolution, fake logit), one graph under TensorFlow.

    Run eagerly, the body costs several inference steps; as one ``tf.function`` the map costs about
    a forward pass plus the head's backward pass (reports/benchmarks/explain.md). The batch axis is
    left open in the signature, so a short last batch does not trace the graph again.
    """
    def cams(x):
        a = split.body(x, training=False)
        logit, grads = _gradients(split.logit, a)
        weights = ops.mean(ops.cast(grads, "float32"), axis=(1, 2), keepdims=True)   # (n, 1, 1, C): channel importance
        return ops.sum(ops.cast(a, "float32") * weights, axis=-1), logit

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(cams, input_signature=[tf.TensorSpec((None, *shape), tf.float32)])
    return cams


def predictor(model: keras.Model, batch_size: int = 64) -> Predict:
    """``model``'s P(fake) as a predict function for :func:`occlusion`, compiled once for any batch size.

    ``predict_on_batch`` traces its graph again when the batch size changes (occlusion's last batch);
    under TensorFlow this is one ``tf.function`` with an open batch axis.
    """
    def forward(x):
        return ops.cast(model(x, training=False), "float32")

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        forward = tf.function(forward, input_signature=[tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)])

    def predict(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        return np.concatenate([np.asarray(ops.convert_to_numpy(forward(x[i:i + batch_size]))).reshape(-1)
                               for i in range(0, len(x), batch_size)]) if len(x) else np.zeros(0, np.float32)

    return predict


def background_hu(window: tuple[float, float]) -> float:
    """The HU a CT window (center, width) maps to black: what an occluding patch is filled with."""
    center, width = window
    return float(center) - float(width) / 2.0


def occlusion_grid(size: int, patch: int | None = None, stride: int | None = None) -> tuple[int, int, list[int]]:
    """(patch, stride, top-left offsets) covering a size² slice; default an 8×8 grid of size/8 patches.

    One forward pass per patch and slice: 64 by default (half strides would cost 225 at 96²).
    """
    patch = int(patch or max(size // 8, 2))
    stride = int(stride or patch)
    if not 0 < patch <= size or stride < 1:
        raise UserError(f"occlusion patch {patch} / stride {stride} do not fit a {size}² slice")
    offsets = list(range(0, size - patch + 1, stride))
    if offsets[-1] != size - patch:
        offsets.append(size - patch)  # the last row/column of patches reaches the border
    return patch, stride, offsets


def occlusion(predict: Predict, images: np.ndarray, fill: float, patch: int | None = None,
              stride: int | None = None, batch_size: int = 64) -> np.ndarray:
    """Occlusion maps (n, S, S) float32 ≥ 0: the mean drop in P(fake) over the patches covering each pixel.

    ``predict`` maps (m, S, S, 1) HU float32 to P(fake) (m,) or (m, 1), e.g. a Keras model's
    ``predict_on_batch`` or an ONNX/OpenVINO runtime's ``predict``. ``fill`` is the patch's HU
    (``background_hu(window)``).
    """
    x = np.asarray(images, np.float32)
    if x.ndim == 3:
        x = x[..., None]
    n, size = len(x), x.shape[1]
    patch, _, offsets = occlusion_grid(size, patch, stride)
    boxes = [(r, c) for r in offsets for c in offsets]
    base = np.asarray(predict(x), np.float32).reshape(-1) if n else np.zeros(0, np.float32)
    total = np.zeros((n, size, size), np.float32)
    cover = np.zeros((size, size), np.float32)
    for r, c in boxes:
        cover[r:r + patch, c:c + patch] += 1.0
    per_batch = max(int(batch_size) // max(len(boxes), 1), 1)   # whole images per predict call
    for start in range(0, n, per_batch):
        chunk = x[start:start + per_batch]
        variants = np.repeat(chunk, len(boxes), axis=0)
        for k, (r, c) in enumerate(boxes):
            variants[k::len(boxes), r:r + patch, c:c + patch, :] = fill
        scores = np.concatenate([np.asarray(predict(variants[i:i + batch_size]), np.float32).reshape(-1)
                                 for i in range(0, len(variants), batch_size)]).reshape(len(chunk), len(boxes))
        drops = base[start:start + len(chunk), None] - scores
        for k, (r, c) in enumerate(boxes):
            total[start:start + len(chunk), r:r + patch, c:c + patch] += drops[:, k, None, None]
    return np.maximum(total / cover, 0.0)


def reinitialised(model: keras.Model) -> keras.Model:
    """The same architecture with fresh random weights (the randomisation sanity check's model)."""
    copy = keras.models.clone_model(model)
    copy.build(model.input_shape)
    return copy
