"""The grouped convolutions' fast path computes what Keras's XLA path computes, without XLA."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medfake.models import grouped_conv

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the fast path is TensorFlow's")

# (input channels, kernel inputs per group, filters, kernel size, stride, padding): RegNet's 3×3 grouped
# convolution with and without its stage's stride 2, and ConvNeXt's 7×7 depthwise one.
CASES = {
    "grouped": (12, 4, 12, 3, 1, "same"),
    "grouped_stride2": (12, 4, 12, 3, 2, "same"),
    "grouped_valid": (8, 2, 16, 3, 1, "valid"),
    "depthwise": (6, 1, 6, 7, 1, "same"),
}


def _paths():
    return [False, True] if grouped_conv.onednn_enabled() else [False]


def _value_and_grads(fn, x, k):
    x, k = tf.constant(x), tf.constant(k)
    with tf.GradientTape() as tape:
        tape.watch([x, k])
        y = fn(x, k)
        loss = tf.reduce_sum(y * tf.sin(y))  # a non-linear loss, so the gradients depend on y itself
    gx, gk = tape.gradient(loss, [x, k])
    return y.numpy(), gx.numpy(), gk.numpy()


@pytest.mark.parametrize("onednn", _paths())
@pytest.mark.parametrize("case", list(CASES))
def test_grouped_conv2d_equals_keras_conv_and_its_gradients(case, onednn):
    channels, per_group, filters, size, stride, padding = CASES[case]
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 9, 9, channels)).astype(np.float32)
    k = rng.normal(size=(size, size, per_group, filters)).astype(np.float32)
    ours = _value_and_grads(lambda a, b: grouped_conv.grouped_conv2d(a, b, stride, padding, 1, onednn), x, k)
    reference = _value_and_grads(lambda a, b: keras.ops.conv(a, b, stride, padding), x, k)
    for got, want in zip(ours, reference):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_the_group_structure_is_kept():
    """Output block j depends on input block j only (a full convolution would mix them)."""
    x = np.zeros((1, 5, 5, 4), np.float32)
    x[..., 0:2] = 1.0  # only the first group's inputs are non-zero
    k = np.ones((3, 3, 2, 4), np.float32)
    for onednn in _paths():
        y = grouped_conv.grouped_conv2d(tf.constant(x), tf.constant(k), 1, "same", 1, onednn).numpy()
        assert np.all(y[..., 0:2] > 0) and np.all(y[..., 2:4] == 0)


def _xla_functions(layer, x) -> int:
    """How many functions of the traced graph carry XLA's must-compile attribute."""
    concrete = tf.function(lambda t: layer(t)).get_concrete_function(tf.TensorSpec(x.shape, tf.float32))
    library = concrete.graph.as_graph_def().library.function
    return sum(1 for f in library if f.attr["_XlaMustCompile"].b)


def test_inside_the_block_a_grouped_layer_traces_without_xla_and_gives_the_same_output():
    layer = keras.layers.Conv2D(8, 3, padding="same", groups=4)
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 8)).astype(np.float32)
    keras_path = keras.ops.convert_to_numpy(layer(x))
    assert _xla_functions(layer, x) > 0  # Keras's own path: one XLA function per grouped conv
    with grouped_conv.fast_grouped_conv() as active:
        assert active
        with grouped_conv.fast_grouped_conv():  # re-entrant: the inner exit keeps the outer block's path
            pass
        assert _xla_functions(layer, x) == 0
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), keras_path, rtol=1e-4, atol=1e-4)
    assert _xla_functions(layer, x) > 0  # Keras's path is back after the block


def test_plain_convolutions_keep_keras_path_inside_the_block():
    layer = keras.layers.Conv2D(3, 3, padding="valid")
    x = np.ones((1, 4, 4, 2), np.float32)
    outside = keras.ops.convert_to_numpy(layer(x))
    with grouped_conv.fast_grouped_conv():
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), outside)
