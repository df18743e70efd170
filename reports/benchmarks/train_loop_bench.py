"""One phase-2 epoch of Xception at 96² (batch 16, 320 random int16 slices, weights=None) through
Keras 3 ``fit`` over medfake's PyDataset, or through ``fitting.train_epoch`` (train_on_batch per
batch). A first epoch warms up (tracing); the second is timed. Run from the repository root."""
import os, resource, sys, time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras

from medfake.models.detector import build_detector
from medfake.training.fitting import epoch_order, image_batches, train_epoch

mode = sys.argv[1]  # "fit" or "train_epoch"
model = build_detector("Xception", 96, weights=None)
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
rng = np.random.default_rng(0)
n = 320
images = rng.normal(-600, 300, (n, 96, 96)).astype("int16")
labels = (rng.random(n) > 0.5).astype("float32")


def one(epoch):
    order = epoch_order(0, 2, epoch, n)
    batches = image_batches(images, order, labels[order], 16)
    if mode == "fit":
        model.fit(batches, None, epochs=1, verbose=0, shuffle=False)
    else:
        train_epoch(model, batches)


one(0)
r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
one(1)
dt, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
steps = n // 16
print(f"{mode:<12} {dt / steps * 1000:6.0f} ms/step  minor page faults/step {(r1.ru_minflt - r0.ru_minflt) / steps:8.0f}"
      f"  sys {(r1.ru_stime - r0.ru_stime) / steps:.2f} s/step  user {(r1.ru_utime - r0.ru_utime) / steps:.2f} s/step")
