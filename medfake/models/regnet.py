"""RegNetX-4.0GF and RegNetY-4.0GF on Keras 3 (Radosavovic et al. 2020, "Designing Network Design Spaces").

Keras 3 ships no RegNet; the study's RegNetX040/RegNetY040 come from the Keras 2 package
(`tf_keras.applications.regnet`). This module builds the same networks from plain Keras 3
layers with the same layer names, layer order and weight order, so the official ImageNet
files (``regnetx040_notop.h5``, ``regnety040_notop.h5``) load with ``model.load_weights``.

Architecture facts (shared by both tf-keras and the paper's RegNet design space):
- input 0..255 RGB; a ``Rescaling(1/255)`` "prestem" layer is part of the model (no
  mean/std normalisation), so callers feed raw pixels;
- stem: 3×3 conv, 32 channels, stride 2, BatchNorm, ReLU;
- four stages; the first block of each stage has stride 2 and a 1×1 projection shortcut;
- block (bottleneck ratio 1): 1×1 conv → BN → ReLU → grouped 3×3 conv (groups =
  width / group width) → BN → ReLU → [Y only: squeeze-excitation, squeeze width
  = 0.25 × the block's *input* channels] → 1×1 conv → BN → add shortcut → ReLU;
- BatchNorm momentum 0.9, epsilon 1e-5; convolutions without bias except inside SE.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import keras
from keras import layers

WEIGHTS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/regnet/"
STEM_WIDTH = 32
SQUEEZE_EXCITE_RATIO = 0.25
BATCH_NORM = {"momentum": 0.9, "epsilon": 1e-5}
MIN_SIZE = 32  # five stride-2 steps: 32 px → a 1×1 feature map
DEFAULT_SIZE = 224


@dataclass(frozen=True)
class RegNetDesign:
    """One point of the RegNet design space: per-stage depths and widths, group width, block type."""

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    group_width: int
    block_type: str  # "X" (plain) or "Y" (with squeeze-excitation)
    top_sha256: str  # hash of the ImageNet file with the classifier (<name>.h5)
    notop_sha256: str  # hash of the ImageNet file without it (<name>_notop.h5)


DESIGNS = {
    "regnetx040": RegNetDesign(
        depths=(2, 5, 14, 2),
        widths=(80, 240, 560, 1360),
        group_width=40,
        block_type="X",
        top_sha256="ba128046c588a26dbd3b3a011b26cb7fa3cf8f269c184c132372cb20b6eb54c1",
        notop_sha256="b4ed0ca0b9a98e789e05000e830403a7ade4d8afa01c73491c44610195198afe",
    ),
    "regnety040": RegNetDesign(
        depths=(2, 6, 12, 2),
        widths=(128, 192, 512, 1088),
        group_width=64,
        block_type="Y",
        top_sha256="98d00118b335162bbffe8f1329e54e5c8e75ee09b2a5414f97b0ddfc56e796f6",
        notop_sha256="b5be2a5e5f072ecdd9c0b8a437cd896df0efa1f6a1f77e41caa8719b7dfcb05d",
    ),
}


def weights_file_name(design_name: str, include_top: bool = False) -> str:
    """The file name Keras caches under ``$KERAS_HOME/models`` (same as tf-keras)."""
    return f"{design_name}.h5" if include_top else f"{design_name}_notop.h5"


def _conv(filters, kernel_size, name, strides=1, groups=1):
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        groups=groups,
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )


def _batch_norm(name):
    return layers.BatchNormalization(name=name, **BATCH_NORM)


def _squeeze_excite(x, squeeze_filters, name):
    """Channel attention (Hu et al. 2018): GAP → 1×1 ReLU → 1×1 sigmoid → scale the input."""
    channels = x.shape[-1]
    scale = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze_and_excite_gap")(x)
    scale = layers.Conv2D(
        squeeze_filters,
        1,
        activation="relu",
        kernel_initializer="he_normal",
        name=f"{name}_squeeze_and_excite_squeeze",
    )(scale)
    scale = layers.Conv2D(
        channels,
        1,
        activation="sigmoid",
        kernel_initializer="he_normal",
        name=f"{name}_squeeze_and_excite_excite",
    )(scale)
    return layers.Multiply(name=f"{name}_squeeze_and_excite_multiply")([scale, x])


def _block(x, filters_out, design: RegNetDesign, stride: int, name: str):
    """One X or Y bottleneck block (ratio 1); layers are created in tf-keras's order."""
    filters_in = x.shape[-1]
    groups = filters_out // design.group_width
    if stride != 1:
        shortcut = _conv(filters_out, 1, f"{name}_skip_1x1", strides=stride)(x)
        shortcut = _batch_norm(f"{name}_skip_bn")(shortcut)
    else:
        shortcut = x
    y = _conv(filters_out, 1, f"{name}_conv_1x1_1")(x)
    y = _batch_norm(f"{name}_conv_1x1_1_bn")(y)
    y = layers.ReLU(name=f"{name}_conv_1x1_1_relu")(y)
    y = _conv(filters_out, 3, f"{name}_conv_3x3", strides=stride, groups=groups)(y)
    y = _batch_norm(f"{name}_conv_3x3_bn")(y)
    y = layers.ReLU(name=f"{name}_conv_3x3_relu")(y)
    if design.block_type == "Y":
        y = _squeeze_excite(y, int(filters_in * SQUEEZE_EXCITE_RATIO), name)
    y = _conv(filters_out, 1, f"{name}_conv_1x1_2")(y)
    y = _batch_norm(f"{name}_conv_1x1_2_bn")(y)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_exit_relu")(y)


def _input(input_shape, input_tensor, include_top, weights):
    """Input layer (or the caller's Keras tensor) with the shape checks keras.applications makes."""
    if input_shape is None:
        input_shape = (DEFAULT_SIZE, DEFAULT_SIZE, 3) if include_top else (None, None, 3)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"RegNet needs a (height, width, 3) input shape, got {input_shape}")
    if any(side is not None and side < MIN_SIZE for side in input_shape[:2]):
        raise ValueError(f"RegNet needs inputs of at least {MIN_SIZE}×{MIN_SIZE}, got {input_shape}")
    if include_top and weights == "imagenet" and input_shape != (DEFAULT_SIZE, DEFAULT_SIZE, 3):
        raise ValueError(f"the ImageNet classifier needs {DEFAULT_SIZE}×{DEFAULT_SIZE}×3 inputs, got {input_shape}")
    if input_tensor is None:
        tensor = keras.Input(shape=input_shape)
        return tensor, tensor
    if not keras.backend.is_keras_tensor(input_tensor):
        raise ValueError("input_tensor must be a Keras tensor (the output of keras.Input or a layer)")
    return input_tensor, keras.utils.get_source_inputs(input_tensor)[0]


def build_regnet(
    design_name: str,
    include_top: bool = False,
    weights=None,
    input_shape=None,
    input_tensor=None,
    pooling=None,
    classes: int = 1000,
    classifier_activation="softmax",
    name: str | None = None,
) -> keras.Model:
    """Build a RegNet of DESIGNS[design_name]; weights None, "imagenet" or a weights file path."""
    design = DESIGNS[design_name]
    if not (weights in (None, "imagenet") or os.path.exists(str(weights))):
        raise ValueError(f"weights must be None, 'imagenet' or an existing file path, got {weights!r}")
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError(f"the ImageNet classifier has 1000 classes, got classes={classes}")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    model_name = name or design_name

    x, inputs = _input(input_shape, input_tensor, include_top, weights)
    x = layers.Rescaling(1.0 / 255.0, name=f"{model_name}_prestem_rescaling")(x)
    x = _conv(STEM_WIDTH, 3, f"{model_name}_stem_conv", strides=2)(x)
    x = _batch_norm(f"{model_name}_stem_bn")(x)
    x = layers.ReLU(name=f"{model_name}_stem_relu")(x)
    for stage, (depth, width) in enumerate(zip(design.depths, design.widths)):
        for index in range(depth):
            block_name = f"{model_name}_Stage_{stage}_{design.block_type}Block_{index}"
            x = _block(x, width, design, stride=2 if index == 0 else 1, name=block_name)

    if include_top:
        x = layers.GlobalAveragePooling2D(name=f"{model_name}_head_gap")(x)
        x = layers.Dense(classes, activation=classifier_activation, name=f"{model_name}_head_dense")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name=f"{model_name}_avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name=f"{model_name}_max_pool")(x)
    model = keras.Model(inputs, x, name=model_name)

    if weights == "imagenet":
        file_name = weights_file_name(design_name, include_top)
        weights = keras.utils.get_file(
            file_name,
            WEIGHTS_BASE_URL + file_name,
            cache_subdir="models",
            file_hash=design.top_sha256 if include_top else design.notop_sha256,
        )
    if weights is not None:
        model.load_weights(weights)
    return model


def RegNetX040(
    include_top=False,
    weights=None,
    input_shape=None,
    input_tensor=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name="regnetx040",
):
    """RegNetX-4.0GF: depths 2/5/14/2, widths 80/240/560/1360, group width 40; takes 0..255 RGB."""
    return build_regnet(
        "regnetx040", include_top, weights, input_shape, input_tensor, pooling, classes, classifier_activation, name
    )


def RegNetY040(
    include_top=False,
    weights=None,
    input_shape=None,
    input_tensor=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name="regnety040",
):
    """RegNetY-4.0GF: depths 2/6/12/2, widths 128/192/512/1088, group width 64, SE 0.25; takes 0..255 RGB."""
    return build_regnet(
        "regnety040", include_top, weights, input_shape, input_tensor, pooling, classes, classifier_activation, name
    )
