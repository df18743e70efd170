"""Grouped convolutions without XLA on TensorFlow, for the time a process trains and scores a detector.

Keras 3 on TensorFlow runs every grouped ``Conv2D`` (``groups > 1``: RegNetX040/RegNetY040's 3×3
convolutions, ConvNeXtTiny's 7×7 depthwise ones) as its own XLA-compiled function
(keras/src/backend/tensorflow/nn.py ``conv``: "grouped convolutions are broken on CPU without
XLA"). On this project's 2-core AMD EPYC that one op made a RegNetX040 training step at 80², batch 8,
2.01 s against 0.22 s with TensorFlow's own convolution, which oneDNN runs grouped (TensorFlow 2.21;
ConvNeXtTiny 1.28 → 0.22 s; reports/benchmarks/grouped-conv.md). Without oneDNN TensorFlow's CPU
kernel refuses a grouped filter, so there each group is convolved on its own (depthwise ones as
one depthwise convolution). The detector's layers stay the built-in ``Conv2D`` with ``groups``:
what is saved and exported is unchanged, and a graph traced outside :func:`fast_grouped_conv`
(ONNX/OpenVINO export, another process) takes Keras's own path.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_LOCK = threading.Lock()
_DEPTH = 0
_KERAS_CONV = None  # Keras's own backend ``conv`` while the fast one is installed


def onednn_enabled() -> bool:
    """Whether TensorFlow's CPU kernels are oneDNN's (they take grouped filters); False if unknown."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except Exception:  # noqa: BLE001 - a TensorFlow without the probe gets the path that works everywhere
        return False


def grouped_conv2d(inputs, kernel, strides, padding: str, dilation_rate, onednn: bool):
    """A channels-last 2-D convolution whose kernel takes ``channels / groups`` inputs per group.

    Same arithmetic as ``Conv2D(groups=g)``: output channel block ``j`` sees only input block ``j``.
    """
    import tensorflow as tf

    padding = padding.upper()
    channels, per_group, filters = inputs.shape[-1], kernel.shape[-2], kernel.shape[-1]
    groups = channels // per_group
    if onednn:
        return tf.nn.convolution(inputs, kernel, strides, padding, dilations=dilation_rate)
    if per_group == 1 and filters == channels:
        # depthwise: kernel (h, w, 1, C) is the depthwise filter (h, w, C, 1)
        kh, kw = kernel.shape[0], kernel.shape[1]
        stride = _pair(strides)
        return tf.nn.depthwise_conv2d(inputs, tf.reshape(kernel, (kh, kw, channels, 1)), (1, *stride, 1), padding,
                                      dilations=_pair(dilation_rate))
    parts = zip(tf.split(inputs, groups, axis=-1), tf.split(kernel, groups, axis=-1))
    return tf.concat([tf.nn.convolution(x, k, strides, padding, dilations=dilation_rate) for x, k in parts], axis=-1)


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


@contextlib.contextmanager
def fast_grouped_conv() -> Iterator[bool]:
    """While inside, Keras-on-TensorFlow traces grouped 2-D convolutions with :func:`grouped_conv2d`.

    Yields whether it is in effect (only on the TensorFlow backend). Re-entrant; graphs traced inside
    keep the fast op after the block ends.
    """
    global _DEPTH, _KERAS_CONV
    import keras

    if keras.backend.backend() != "tensorflow":
        yield False
        return
    from keras.src.backend.tensorflow import nn as tf_nn

    with _LOCK:
        if _DEPTH == 0:
            _KERAS_CONV = tf_nn.conv
            tf_nn.conv = _fast_conv(_KERAS_CONV, onednn_enabled())
        _DEPTH += 1
    try:
        yield True
    finally:
        with _LOCK:
            _DEPTH -= 1
            if _DEPTH == 0:
                tf_nn.conv, _KERAS_CONV = _KERAS_CONV, None


def _fast_conv(keras_conv, onednn: bool):
    """Keras's backend ``conv`` signature: grouped channels-last 2-D convolutions here, the rest to Keras."""

    def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        grouped = (len(inputs.shape) == 4 and data_format in (None, "channels_last")
                   and inputs.shape[-1] is not None and kernel.shape[-2] != inputs.shape[-1])
        if not grouped:
            return keras_conv(inputs, kernel, strides, padding, data_format, dilation_rate)
        return grouped_conv2d(inputs, kernel, strides, padding, dilation_rate, onednn)

    return conv
