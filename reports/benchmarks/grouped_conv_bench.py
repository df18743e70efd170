"""Grouped convolutions on TensorFlow's CPU: Keras's per-op XLA function against ``fast_grouped_conv``.

Per backbone: a detector with random weights and the noise-residual input (study-cpu's), trained
with Adam at batch 8 on random HU slices: seconds per training step (``fit``, after a warm-up fit
that traces) and milliseconds per inference step (``predict_on_batch``, batch 8, after a warm-up),
once with Keras's own path and once inside ``fast_grouped_conv``, starting from the same weights;
then the largest difference of P(fake) on one batch between the two paths' traced inference graphs.
Run from the repository root: ``.venv/bin/python reports/benchmarks/grouped_conv_bench.py SIZE STEPS MODEL...``
"""
import contextlib
import os
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras

from medfake.models.detector import build_detector
from medfake.models.grouped_conv import fast_grouped_conv, onednn_enabled

size, steps, names = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
rng = np.random.default_rng(0)
x = rng.uniform(-1000, 400, (8 * (steps + 2), size, size, 1)).astype("float32")
y = rng.integers(0, 2, (len(x), 1)).astype("float32")
INFER_STEPS = 10


def measure(model, weights, fast: bool):
    model.set_weights(weights)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")  # fresh traced functions
    with fast_grouped_conv() if fast else contextlib.nullcontext():
        model.fit(x[:16], y[:16], batch_size=8, epochs=1, verbose=0)
        start = time.perf_counter()
        model.fit(x[16:], y[16:], batch_size=8, epochs=1, verbose=0)
        train_s = (time.perf_counter() - start) / steps
        model.set_weights(weights)
        model.make_predict_function(force=True)
        p = np.asarray(model.predict_on_batch(x[:8]))
        start = time.perf_counter()
        for _ in range(INFER_STEPS):
            model.predict_on_batch(x[:8])
        infer_ms = (time.perf_counter() - start) / INFER_STEPS * 1000
    return train_s, infer_ms, p


print(f"oneDNN: {onednn_enabled()}; {steps} timed training steps, {INFER_STEPS} timed inference steps, batch 8")
print()
print("| backbone | size | train step, Keras (s) | fast (s) | speed-up | inference step, Keras (ms) | fast (ms) "
      "| speed-up | max abs ΔP(fake) |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for name in names:
    model = build_detector(name, size, weights=None, window=(-700.0, 700.0), noise_residual=True)
    weights = model.get_weights()
    keras_train, keras_infer, keras_p = measure(model, weights, fast=False)
    fast_train, fast_infer, fast_p = measure(model, weights, fast=True)
    delta = float(np.max(np.abs(keras_p - fast_p)))
    print(f"| {name} | {size}² | {keras_train:.3f} | {fast_train:.3f} | {keras_train / fast_train:.1f}× "
          f"| {keras_infer:.1f} | {fast_infer:.1f} | {keras_infer / fast_infer:.1f}× | {delta:.1e} |", flush=True)
    del model
    keras.backend.clear_session()
