"""The backbone registry: the study's 13 ImageNet CNNs (seed Table 3), one entry each.

Every other module (detector, training, latency, CLI choices, tests) reads this table;
nothing else names backbones. Each entry says how to build the base (``include_top=False``,
``pooling=None``), how 0..255 RGB pixels must be scaled before it, its minimum input size,
its feature width, the ImageNet file Keras caches, and the study's Table 3 figures.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np

from medfake.models import regnet
from medfake.core.errors import UserError

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)  # "torch" mode, on 0..1 pixels
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)  # "caffe" mode, on 0..255 pixels
KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class Backbone:
    """One registry entry; ``constructor(input_shape=(S, S, 3), weights=None|"imagenet"|path)`` → keras.Model."""

    name: str
    constructor: Callable
    scaling: str
    min_size: int
    feature_width: int
    weights_file: str
    weights_url: str
    paper_params_m: float
    paper_latency_ms: tuple[float, float]
    # The last convolutional block's output inside the base, for Grad-CAM (medfake.models.saliency).
    # A layer name Keras fixes (not an auto-numbered "activation_113", which changes per session);
    # empty: the base's own output, where only an auto-numbered layer ends the last block.
    cam_layer: str


def _application(build: Callable, **options) -> Callable:
    """A ``keras.applications`` builder without its classifier; a partial stays picklable and hashable."""
    return functools.partial(build, include_top=False, pooling=None, **options)


def _scale_none(x):
    return x


def _scale_tf(x):
    """Inception-style: 0..255 → -1..1."""
    return x / 127.5 - 1.0


def _scale_torch(x):
    """PyTorch-style: 0..1, then per-channel ImageNet mean and std (RGB)."""
    mean = keras.ops.cast(np.array(IMAGENET_MEAN_RGB), x.dtype)
    std = keras.ops.cast(np.array(IMAGENET_STD_RGB), x.dtype)
    return (x / 255.0 - mean) / std


def _scale_caffe(x):
    """Caffe-style: RGB → BGR, then minus the ImageNet BGR mean, no rescaling."""
    mean = keras.ops.cast(np.array(IMAGENET_MEAN_BGR), x.dtype)
    return keras.ops.flip(x, axis=-1) - mean


SCALINGS: dict[str, Callable] = {"none": _scale_none, "tf": _scale_tf, "torch": _scale_torch, "caffe": _scale_caffe}


def scale_input(x, scaling: str):
    """Scale float 0..255 RGB (channels last) as the backbone's ImageNet training did; keras.ops only."""
    if scaling not in SCALINGS:
        raise ValueError(f"unknown input scaling {scaling!r}; one of {', '.join(SCALINGS)}")
    return SCALINGS[scaling](x)


def _url(folder_and_file: str) -> str:
    return KERAS_APPLICATIONS_URL + folder_and_file


# Fields in order: name, constructor, scaling, min_size, feature_width, weights_file, weights_url,
# Table 3 parameters (M, with the study's head at 512²), Table 3 latency (ms mean, std on a T4), cam_layer.
# File names are those keras.applications passes to get_file (tests intercept the request).
_REGISTRY: tuple[Backbone, ...] = (
    Backbone(
        "ConvNeXtTiny",
        _application(keras.applications.ConvNeXtTiny, include_preprocessing=True),
        "none", 32, 768,
        "convnext_tiny_notop.h5", _url("convnext/convnext_tiny_notop.h5"),
        28.3, (582.1, 18.6), cam_layer="",  # ends in an auto-numbered LayerNormalization
    ),
    Backbone(
        "DenseNet121",
        _application(keras.applications.DenseNet121),
        "torch", 32, 1024,
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _url("densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        7.7, (334.9, 72.4), cam_layer="relu",
    ),
    Backbone(
        "DenseNet169",
        _application(keras.applications.DenseNet169),
        "torch", 32, 1664,
        "densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _url("densenet/densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        13.6, (396.9, 67.2), cam_layer="relu",
    ),
    Backbone(
        "DenseNet201",
        _application(keras.applications.DenseNet201),
        "torch", 32, 1920,
        "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _url("densenet/densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        19.4, (409.2, 51.8), cam_layer="relu",
    ),
    Backbone(
        "EfficientNetB4",
        # Keras 3's EfficientNet (v1) always scales inside; it has no include_preprocessing switch.
        # Its ImageNet rescaling layer exists only when weights="imagenet" (not for a file path).
        _application(keras.applications.EfficientNetB4),
        "none", 32, 1792,
        "efficientnetb4_notop.h5", "https://storage.googleapis.com/keras-applications/efficientnetb4_notop.h5",
        18.7, (442.9, 52.7), cam_layer="top_activation",
    ),
    Backbone(
        "EfficientNetV2S",
        _application(keras.applications.EfficientNetV2S, include_preprocessing=True),
        "none", 32, 1280,
        "efficientnetv2-s_notop.h5", _url("efficientnet_v2/efficientnetv2-s_notop.h5"),
        21.1, (382.6, 65.7), cam_layer="top_activation",
    ),
    Backbone(
        "InceptionV3",
        _application(keras.applications.InceptionV3),
        "tf", 75, 2048,
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _url("inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        23.0, (380.7, 86.6), cam_layer="mixed10",
    ),
    Backbone(
        "MobileNetV3Large",
        _application(keras.applications.MobileNetV3Large, include_preprocessing=True, minimalistic=False),
        "none", 32, 960,
        "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
        _url("mobilenet_v3/weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"),
        3.6, (325.4, 44.7), cam_layer="",  # ends in an auto-numbered hard-swish
    ),
    Backbone(
        "RegNetX040",
        regnet.RegNetX040,
        "none", regnet.MIN_SIZE, 1360,
        regnet.weights_file_name("regnetx040"), regnet.WEIGHTS_BASE_URL + regnet.weights_file_name("regnetx040"),
        21.7, (457.2, 56.1), cam_layer="regnetx040_Stage_3_XBlock_1_exit_relu",
    ),
    Backbone(
        "RegNetY040",
        regnet.RegNetY040,
        "none", regnet.MIN_SIZE, 1088,
        regnet.weights_file_name("regnety040"), regnet.WEIGHTS_BASE_URL + regnet.weights_file_name("regnety040"),
        20.3, (446.3, 86.3), cam_layer="regnety040_Stage_3_YBlock_1_exit_relu",
    ),
    Backbone(
        "ResNet50V2",
        _application(keras.applications.ResNet50V2),
        "tf", 32, 2048,
        "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _url("resnet/resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        24.7, (368.3, 87.2), cam_layer="post_relu",
    ),
    Backbone(
        "VGG19",
        _application(keras.applications.VGG19),
        "caffe", 32, 512,
        "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _url("vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        20.4, (490.2, 45.1), cam_layer="block5_conv4",  # before its last max-pool
    ),
    Backbone(
        "Xception",
        _application(keras.applications.Xception),
        "tf", 71, 2048,
        "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _url("xception/xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        22.0, (395.3, 76.9), cam_layer="block14_sepconv2_act",
    ),
)
_BY_LOWER_NAME = {backbone.name.lower(): backbone for backbone in _REGISTRY}


def list_backbones() -> list[Backbone]:
    """All 13 backbones in the study's order (seed Table 3)."""
    return list(_REGISTRY)


def get_backbone(name: str) -> Backbone:
    """The backbone called ``name`` (any letter case); a UserError naming the valid ones otherwise."""
    backbone = _BY_LOWER_NAME.get(str(name).strip().lower())
    if backbone is None:
        valid = ", ".join(backbone.name for backbone in _REGISTRY)
        raise UserError(f"unknown backbone {name!r}; choose one of: {valid}")
    return backbone
