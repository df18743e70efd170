"""The detector: one self-contained Keras model from a Hounsfield-unit slice to P(tampered).

Layout (the study's section 3: backbone + GAP + Dense 512 + Dense 256 + Dense 1 sigmoid)::

    "hu" (S,S,1) HU → CT window (Rescaling + ReLU clip to 0..255) → grey to RGB (Concatenate;
      with ``noise_residual`` channels 2-3 are a fixed Laplacian "noise_residual" of the unclipped window)
      → ImageNet scaling (Rescaling / Normalization) → "backbone" → "pool" (GAP) → [Dropout] → "head_dense_1" (512 ReLU) → [Dropout] → "embedding" (256 ReLU)
      → [Dropout] → "probability" (1 sigmoid, float32)

Windowing and the backbone's ImageNet input scaling live inside the model, so a saved ``.keras``
file, an ONNX or OpenVINO export and the ``scan`` step all take raw HU and agree. Every layer is a
Keras built-in, so the model loads without medfake (MLflow pyfunc, ``mlflow models serve``).
Only ``keras`` and ``keras.ops`` are used here, and TensorFlow's ``tf.function`` or ``jax.jit`` where it is the backend.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterable, Iterator, Sequence

import keras
import numpy as np

from medfake.models.registry import IMAGENET_MEAN_BGR, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, Backbone, get_backbone
from medfake.core.errors import UserError

INPUT_NAME = "hu"
BACKBONE_NAME = "backbone"
POOL_NAME = "pool"
EMBEDDING_NAME = "embedding"
OUTPUT_NAME = "probability"
RESIDUAL_NAME = "noise_residual"
RESIDUAL_CLIP_NAME = "noise_residual_clip"
# Discrete Laplacian: zero on flat and linear HU, 8x the amplitude of a period-2 checkerboard.
LAPLACIAN = ((0.0, -1.0, 0.0), (-1.0, 4.0, -1.0), (0.0, -1.0, 0.0))
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def window_layers(center: float, width: float) -> list[keras.layers.Layer]:
    """CT window as built-in layers: HU → linear map of [center ± width/2] to 0..255, clipped.

    Built-in layers only (here and below), so a saved detector loads anywhere, e.g. in
    ``mlflow models serve``, without importing medfake.
    """
    if not width > 0:
        raise UserError(f"CT window width must be > 0 HU, got {width}")
    low = float(center) - float(width) / 2.0
    scale = 255.0 / float(width)
    return [
        keras.layers.Rescaling(scale, offset=-low * scale, dtype="float32", name="ct_window_scale"),
        keras.layers.ReLU(max_value=255.0, dtype="float32", name="ct_window"),
    ]


def grey_to_channels(scaled, grey, noise_residual: bool):
    """Three backbone channels: the windowed grey slice (0..255) three times (the study, what ImageNet
    weights expect) or, with ``noise_residual``, (grey, residual, residual).

    The residual is a fixed, non-trainable Laplacian centred on 127.5 and clipped to 0..255: the
    "noise residual" input of image-forensics detectors. It keeps the high-frequency trace a
    generator leaves (a transposed convolution's period-2 checkerboard, study section 3.2) and drops
    the anatomy, which a backbone trained from scratch otherwise learns first; on the quickstart
    (Xception from scratch, 96²) that first-learned anatomy was anti-predictive on unseen scans
    (reports/quickstart-training.md). It is taken from ``scaled``, the window's linear map before
    its clip, so the trace stays visible on tissue the window saturates (an injected nodule at
    +60 HU is white in a lung window). Built-in layers keep the model loadable without medfake and
    exportable to ONNX/OpenVINO; float32, so reduced precision never rounds the faint trace.
    """
    if not noise_residual:
        return keras.layers.Concatenate(axis=-1, dtype="float32", name="grey_to_rgb")([grey, grey, grey])
    conv = keras.layers.Conv2D(1, 3, padding="same", dtype="float32", trainable=False, name=RESIDUAL_NAME)
    residual = conv(scaled)
    conv.set_weights([np.asarray(LAPLACIAN, np.float32).reshape(3, 3, 1, 1), np.asarray([127.5], np.float32)])
    residual = keras.layers.ReLU(max_value=255.0, dtype="float32", name=RESIDUAL_CLIP_NAME)(residual)
    return keras.layers.Concatenate(axis=-1, dtype="float32", name="grey_to_rgb")([grey, residual, residual])


def scaling_layers(scaling: str) -> list[keras.layers.Layer]:
    """The backbone's ImageNet input scaling of 0..255 RGB as built-in layers.

    One per-channel ``Rescaling`` (x · scale + offset) each: its constants are made inside ``call``,
    so they stay constants in ONNX/OpenVINO exports (``Normalization`` keeps its mean and variance as
    tensors made at build time, which the ONNX export turns into missing graph inputs). The three
    channels are one grey slice repeated, so Caffe's RGB→BGR swap changes nothing and only its BGR
    mean is subtracted.
    """
    torch_scale = [1.0 / (255.0 * std) for std in IMAGENET_STD_RGB]
    torch_offset = [-mean / std for mean, std in zip(IMAGENET_MEAN_RGB, IMAGENET_STD_RGB)]
    factories = {
        "none": lambda: [],
        "tf": lambda: [keras.layers.Rescaling(1 / 127.5, offset=-1.0, dtype="float32", name="imagenet_scaling")],
        "torch": lambda: [
            keras.layers.Rescaling(torch_scale, offset=torch_offset, dtype="float32", name="imagenet_scaling"),
        ],
        "caffe": lambda: [
            keras.layers.Rescaling(1.0, offset=[-mean for mean in IMAGENET_MEAN_BGR], dtype="float32",
                                   name="imagenet_scaling"),
        ],
    }
    if scaling not in factories:
        raise ValueError(f"unknown input scaling {scaling!r}; one of {', '.join(factories)}")
    return factories[scaling]()


@contextlib.contextmanager
def dtype_policy(precision: str) -> Iterator[str]:
    """Build under the Keras policy of ``precision``, then restore the global policy.

    ``keras.applications`` constructors take no ``dtype``; their layers read the global policy
    when they are created, so the policy is set for the duration of the build only.
    """
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISIONS[precision])
    try:
        yield PRECISIONS[precision]
    finally:
        keras.config.set_dtype_policy(previous)


def head_layer_names(head_units: Sequence[int]) -> list[str]:
    """Names of the head's Dense layers: head_dense_1 … , "embedding" (last hidden), "probability"."""
    if not head_units:
        raise UserError("model.head_units must name at least one hidden layer (the embedding)")
    hidden = [f"head_dense_{i}" for i in range(1, len(head_units))] + [EMBEDDING_NAME]
    return [*hidden, OUTPUT_NAME]


def _apply_head(features, head_units: Sequence[int], dropout: float):
    """Dense ReLU layers of ``head_units`` (last = embedding) then the float32 sigmoid output.

    With ``dropout`` > 0 a Dropout precedes every Dense layer (config ``model.dropout``).
    """
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"model.dropout must be in [0, 1), got {dropout}")
    names = head_layer_names(head_units)
    x = features
    for index, (units, name) in enumerate(zip([*head_units, 1], names), start=1):
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name=f"head_dropout_{index}")(x)
        if name == OUTPUT_NAME:
            x = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=name)(x)
        else:
            x = keras.layers.Dense(int(units), activation="relu", name=name)(x)
    return x


def _resolve_backbone(backbone: str | Backbone) -> Backbone:
    return backbone if isinstance(backbone, Backbone) else get_backbone(backbone)


def build_detector(
    backbone: str | Backbone,
    image_size: int,
    weights: str | None = None,
    window: tuple[float, float] = (-600.0, 1500.0),
    head_units: Sequence[int] = (512, 256),
    dropout: float = 0.0,
    precision: str = "float32",
    noise_residual: bool = False,
) -> keras.Model:
    """Backbone + the study's head as one model taking HU slices (S,S,1), giving P(fake) (N,1).

    ``weights`` is what the backbone constructor takes: None, "imagenet" or a file path (resolve
    user input with ``medfake.models.weights.resolve_weights`` first). ``window`` is (center, width) in HU.
    ``noise_residual``: see :func:`grey_to_channels` (config ``model.noise_residual``).
    """
    spec = _resolve_backbone(backbone)
    size = int(image_size)
    if size < spec.min_size:
        raise UserError(
            f"image size {size} is below the minimum input size {spec.min_size} of backbone {spec.name}"
        )
    center, width = window
    with dtype_policy(precision):
        hu = keras.Input(shape=(size, size, 1), dtype="float32", name=INPUT_NAME)
        window_scale, window_clip = window_layers(center, width)
        scaled = window_scale(hu)
        x = grey_to_channels(scaled, window_clip(scaled), noise_residual)
        for layer in scaling_layers(spec.scaling):
            x = layer(x)
        base = spec.constructor(input_shape=(size, size, 3), weights=weights)
        backbone = keras.Model(base.input, base.output, name=BACKBONE_NAME)
        x = backbone(x)
        features = keras.layers.GlobalAveragePooling2D(dtype="float32", name=POOL_NAME)(x)
        probability = _apply_head(features, head_units, dropout)
        model = keras.Model(hu, probability, name=f"medfake_{spec.name.lower()}")
    return model


def head_model(
    feature_width: int,
    head_units: Sequence[int] = (512, 256),
    dropout: float = 0.0,
    precision: str = "float32",
) -> keras.Model:
    """The head alone, from pooled backbone features (feature_width,) to P(fake).

    Layer names equal the detector's, so ``copy_head_weights`` moves weights both ways: phase 1
    of training can run on cached features and the result goes back onto the backbone.
    """
    with dtype_policy(precision):
        features = keras.Input(shape=(int(feature_width),), dtype="float32", name=POOL_NAME)
        probability = _apply_head(features, head_units, dropout)
        return keras.Model(features, probability, name="medfake_head")


def _weighted_head_layers(model: keras.Model) -> dict[str, keras.layers.Layer]:
    fixed = (BACKBONE_NAME, RESIDUAL_NAME)
    return {layer.name: layer for layer in model.layers if layer.weights and layer.name not in fixed}


def copy_head_weights(src: keras.Model, dst: keras.Model) -> list[str]:
    """Copy the weights of every head layer (by name) from ``src`` to ``dst``; return the names."""
    src_layers, dst_layers = _weighted_head_layers(src), _weighted_head_layers(dst)
    if set(src_layers) != set(dst_layers):
        raise UserError(
            f"head layers differ: {sorted(src_layers)} in {src.name} vs {sorted(dst_layers)} in {dst.name}"
        )
    for name, layer in src_layers.items():
        target = dst_layers[name]
        shapes = [tuple(w.shape) for w in layer.weights], [tuple(w.shape) for w in target.weights]
        if shapes[0] != shapes[1]:
            raise UserError(f"head layer {name} has weight shapes {shapes[0]} in {src.name} but {shapes[1]} in {dst.name}")
        target.set_weights(layer.get_weights())
    return sorted(src_layers)


def attach_head(detector: keras.Model, head: keras.Model) -> keras.Model:
    """Put a head trained on cached features back on the detector (in place); return the detector."""
    copy_head_weights(head, detector)
    return detector


def feature_extractor(detector: keras.Model) -> keras.Model:
    """Sub-model from the "hu" input to the pooled backbone features ("pool", float32)."""
    return keras.Model(detector.input, detector.get_layer(POOL_NAME).output, name=f"{detector.name}_features")


def embedding_model(detector: keras.Model) -> keras.Model:
    """Sub-model from the "hu" input to the penultimate 256-d embedding (the study's Fig. 4)."""
    return keras.Model(detector.input, detector.get_layer(EMBEDDING_NAME).output, name=f"{detector.name}_embedding")


def backbone_model(detector: keras.Model) -> keras.Model:
    """The backbone's own Keras model inside a detector (its layers, its weights)."""
    return detector.get_layer(BACKBONE_NAME)


def set_backbone_trainable(detector: keras.Model, unfreeze: str | float | bool | None,
                           freeze_batchnorm: bool = True) -> int:
    """Freeze or unfreeze the backbone: "all", "none" (or None), or a fraction in (0, 1] of its last layers.

    Returns the number of trainable backbone layers; recompile afterwards. With pretrained weights
    BatchNormalization stays frozen, which in Keras 3 also keeps it in inference mode with its
    ImageNet statistics (the Keras fine-tuning recipe; ``training=False`` at call time does not
    survive in a functional model). A backbone trained from scratch (``freeze_batchnorm=False``)
    needs its BatchNorm layers to learn their statistics, so they unfreeze with the rest.
    """
    backbone = detector.get_layer(BACKBONE_NAME)
    layers = backbone.layers
    fraction = _unfreeze_fraction(unfreeze)
    first_trainable = len(layers) - math.ceil(fraction * len(layers))
    backbone.trainable = fraction > 0.0
    for index, layer in enumerate(layers):  # a Functional model does not pass ``trainable`` down itself
        frozen_bn = freeze_batchnorm and isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = index >= first_trainable and not frozen_bn
    return sum(1 for layer in layers if layer.trainable) if backbone.trainable else 0


def recalibrate_batchnorm(detector: keras.Model, batches: Iterable[np.ndarray]) -> int:
    """Set the backbone's BatchNorm moving statistics to the mean of their statistics over ``batches``.

    ``batches`` are HU arrays (b, S, S, 1) run through the detector's preprocessing and the backbone in
    training mode (each pass with momentum 0, so a layer then holds that batch's statistics); what stays is
    their mean over the passes ("precise BatchNorm"); the momenta are restored. A backbone trained from scratch moves its
    weights faster than momentum-averaged statistics follow, so inference mode can score with
    statistics of older weights: on the quickstart (Xception, 96²) validation losses jumped to 7.7 at
    one epoch and 0.66 at the next on nearly the same weights. Returns the number of passes (0: the
    backbone has no BatchNorm).
    """
    norms = [layer for layer in backbone_model(detector).layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms:  # VGG19, ConvNeXtTiny: no moving statistics, the passes would only cost time
        return 0
    forward = _training_forward(detector)
    momenta = [layer.momentum for layer in norms]
    means = [np.zeros(layer.moving_mean.shape, np.float64) for layer in norms]
    variances = [np.zeros(layer.moving_variance.shape, np.float64) for layer in norms]
    passes = 0
    try:
        for layer in norms:  # momentum 0: after a pass each layer holds that batch's statistics
            layer.momentum = 0.0
        for passes, batch in enumerate(batches, start=1):
            forward(np.asarray(batch, np.float32))
            for layer, mean, variance in zip(norms, means, variances):
                mean += keras.ops.convert_to_numpy(layer.moving_mean)
                variance += keras.ops.convert_to_numpy(layer.moving_variance)
        if passes:
            for layer, mean, variance in zip(norms, means, variances):
                layer.moving_mean.assign((mean / passes).astype(np.float32))
                layer.moving_variance.assign((variance / passes).astype(np.float32))
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum
    return passes


_TRAINING_FORWARDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _training_forward(detector: keras.Model):
    """The detector's preprocessing + backbone in training mode, as one callable kept per detector.

    Under TensorFlow it is traced once (a graph): the eager pass cost 9.9 s for 16 batches of DenseNet121
    at 80² against 1.3 s traced, 2 cores — most of a from-scratch study-cpu epoch. The BatchNorm momentum
    is read when the graph is traced, so the caller sets it (to 0) before the first call and keeps it.
    """
    cached = _TRAINING_FORWARDS.get(detector)
    if cached is not None:
        return cached
    base = backbone_model(detector)
    before_base = detector.layers[detector.layers.index(base) - 1]  # the last preprocessing layer
    preprocess = keras.Model(detector.input, before_base.output)

    def forward(batch):
        return base(preprocess(batch), training=True)

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        spec = tf.TensorSpec((None, *detector.input.shape[1:]), tf.float32)
        forward = tf.function(forward, input_signature=[spec])
    elif keras.backend.backend() == "jax":
        forward = _jax_training_forward(preprocess, base)
    _TRAINING_FORWARDS[detector] = forward
    return forward


def _jax_training_forward(preprocess: keras.Model, base: keras.Model):
    """The same pass on JAX as one ``jax.jit`` function (compiled per batch shape).

    Eagerly, JAX dispatches every op of the backbone on its own. Keras layers on JAX are pure
    through ``stateless_call``: the compiled function returns the backbone's new non-trainable
    values (the BatchNorm statistics among them), which are then assigned.
    """
    import jax

    def pure(preprocess_values, trainable, fixed, batch):
        scaled, _ = preprocess.stateless_call(*preprocess_values, batch)
        _, new_fixed = base.stateless_call(trainable, fixed, scaled, training=True)
        return new_fixed

    compiled = jax.jit(pure)

    def forward(batch):
        values = ([v.value for v in preprocess.trainable_variables], [v.value for v in preprocess.non_trainable_variables])
        new_fixed = compiled(values, [v.value for v in base.trainable_variables],
                             [v.value for v in base.non_trainable_variables], batch)
        for variable, value in zip(base.non_trainable_variables, new_fixed):
            variable.assign(value)

    return forward


def has_normalisation(detector: keras.Model) -> bool:
    """Whether the backbone normalises its activations anywhere (BatchNorm, LayerNorm, GroupNorm):
    of the study's 13 only VGG19 does not."""
    kinds = (keras.layers.BatchNormalization, keras.layers.LayerNormalization, keras.layers.GroupNormalization)
    return any(isinstance(layer, kinds) for layer in backbone_model(detector).layers)


def set_batchnorm_momentum(detector: keras.Model, momentum: float) -> int:
    """Set the moving-statistics momentum of every BatchNorm layer in the backbone; return the count."""
    layers = [layer for layer in detector.get_layer(BACKBONE_NAME).layers
              if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.momentum = float(momentum)
    return len(layers)


def _unfreeze_fraction(unfreeze: str | float | bool | None) -> float:
    if unfreeze is None:
        return 0.0
    if isinstance(unfreeze, bool):
        return 1.0 if unfreeze else 0.0
    text = str(unfreeze).strip().lower()
    if text == "all":
        return 1.0
    if text == "none":
        return 0.0
    try:
        fraction = float(text)
    except ValueError:
        fraction = -1.0
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f"train.unfreeze must be 'all', 'none' or a fraction in [0, 1], got {unfreeze!r}")
    return fraction


def count_params_m(model: keras.Model) -> float:
    """All parameters (trainable and not) in millions, as the study's Table 3 counts them."""
    return model.count_params() / 1e6


def with_precision(model: keras.Model, precision: str) -> keras.Model:
    """A copy of a detector whose layers compute in ``precision`` (same weights).

    The CT window, scaling, pooling and output layers stay float32, as ``build_detector`` makes them.
    """
    target = PRECISIONS.get(precision)
    if target is None:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    config = _retype_config(model.get_config(), target)
    with dtype_policy(precision):
        copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


_FLOAT32_LAYERS = {"InputLayer"}
_FLOAT32_NAMES = {POOL_NAME, OUTPUT_NAME, RESIDUAL_NAME, RESIDUAL_CLIP_NAME, "ct_window_scale", "ct_window",
                  "grey_to_rgb", "imagenet_unit", "imagenet_scaling"}


def _retype_config(node, policy_name: str):
    """Walk a layer config and set every layer's dtype policy, except the float32 ones."""
    if isinstance(node, list):
        return [_retype_config(item, policy_name) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _retype_config(value, policy_name) for key, value in node.items()}
    config = node.get("config")
    if isinstance(config, dict) and isinstance(config.get("dtype"), dict) and "class_name" in node:
        keep = node["class_name"] in _FLOAT32_LAYERS or config.get("name") in _FLOAT32_NAMES
        if not keep and config["dtype"].get("class_name") == "DTypePolicy":
            config["dtype"] = {**config["dtype"], "config": {"name": policy_name}}
    return node
