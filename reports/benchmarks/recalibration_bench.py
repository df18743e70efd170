"""BatchNorm re-measurement before a from-scratch validation (``train.bn_recalibration_batches``):
the eager training-mode pass it used to make against ``detector.recalibrate_batchnorm`` now (one
traced pass per detector under TensorFlow). Per backbone: a detector with random weights and the
noise-residual input, 16 random HU batches of 8 (study-cpu's setting), each way timed after a
warm-up call (tracing), and the largest difference between the moving statistics the two leave. Dropout (EfficientNets'
stochastic depth) is set to rate 0 first: in training mode its random masks would make the two
passes differ by chance, not by method.
Run from the repository root: ``.venv/bin/python reports/benchmarks/recalibration_bench.py SIZE MODEL...``
"""
import os, sys, time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras

from medfake.models.detector import backbone_model, build_detector, recalibrate_batchnorm

size, names = int(sys.argv[1]), sys.argv[2:]
rng = np.random.default_rng(0)
batches = [rng.uniform(-1000, 400, (8, size, size, 1)).astype("float32") for _ in range(16)]


def eager(model):
    """The previous implementation: eager passes, momentum (i-1)/i at pass i (a running mean)."""
    base = backbone_model(model)
    preprocess = keras.Model(model.input, model.layers[model.layers.index(base) - 1].output)
    norms = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for i, batch in enumerate(batches, start=1):
        for layer in norms:
            layer.momentum = (i - 1) / i
        base(preprocess(batch), training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum
    return [np.asarray(layer.moving_mean) for layer in norms] + [np.asarray(layer.moving_variance) for layer in norms]


print(f"| backbone | size | eager (s, 16 batches) | traced (s) | speed-up | max abs difference of the statistics |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for name in names:
    keras.utils.set_random_seed(0)
    model = build_detector(name, size, weights=None, noise_residual=True)
    for layer in backbone_model(model).layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    eager(model)  # warm-up
    t = time.perf_counter(); reference = eager(model); eager_s = time.perf_counter() - t
    recalibrate_batchnorm(model, batches[:1])  # warm-up: traces once
    t = time.perf_counter(); recalibrate_batchnorm(model, batches); traced_s = time.perf_counter() - t
    norms = [layer for layer in backbone_model(model).layers if isinstance(layer, keras.layers.BatchNormalization)]
    now = [np.asarray(layer.moving_mean) for layer in norms] + [np.asarray(layer.moving_variance) for layer in norms]
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(reference, now))
    print(f"| {name} | {size}² | {eager_s:.2f} | {traced_s:.2f} | {eager_s / traced_s:.1f}× | {diff:.1e} |", flush=True)
