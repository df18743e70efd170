"""Keras on JAX with TensorFlow absent: the path a GPU machine without TensorFlow runs.

The suite's own process runs Keras on TensorFlow, so the JAX checks run in a child process whose
import system cannot find TensorFlow (as on a machine where it is not installed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parents[1]

WITHOUT_TENSORFLOW = '''
import sys

class Absent:
    """An import finder that finds nothing of TensorFlow's, as if it were not installed."""

    def __init__(self, inner):
        self._inner = inner

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tf_keras", "tf2onnx"):
            return None
        find = getattr(self._inner, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, attr):
        return getattr(self._inner, attr)

sys.meta_path[:] = [Absent(finder) for finder in sys.meta_path]
'''

JAX_RUN = WITHOUT_TENSORFLOW + '''
import json
import keras, mlflow, numpy as np
from medfake.core.config import load_config
from medfake.data.preprocess import cache_path
from medfake.models import saliency
from medfake.models.detector import backbone_model, recalibrate_batchnorm
from medfake.models.runtime import load_keras_file
from medfake.training.train import resolve_plan, train
from tiny_data import TINY, tiny_dataset

assert keras.backend.backend() == "jax"
cfg = load_config("quickstart", [*TINY, "train.bn_recalibration_batches=2", "train.ema_momentum=0.98"])
dataset = tiny_dataset(cache_path(cfg, "d" * 16), phantom_like=True)
run = mlflow.get_run(train(resolve_plan("mobilenetv3large", cfg, "screen"), data_digest=dataset.digest, progress=False))
folder = sys.argv[1]
images = np.load(folder + "/images.npy")
np.save(folder + "/jax_maps.npy", saliency.grad_cam(load_keras_file(folder + "/vgg.keras"), images, positive=False))
detector = load_keras_file(folder + "/mobilenet.keras")
recalibrate_batchnorm(detector, [images, images[::-1] * 0.5])
np.savez(folder + "/jax_stats.npz", *[np.asarray(v) for v in backbone_model(detector).non_trainable_variables])
print(json.dumps({"status": run.info.status, "metrics": run.data.metrics, "params": run.data.params,
                  "tensorflow": sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow")}))
'''


@pytest.mark.slow
def test_train_grad_cam_and_recalibration_on_jax_without_tensorflow(tmp_path, tracking_store):
    """`train` end to end (numpy data pipeline, BatchNorm recalibration, evaluation, logging), and
    Grad-CAM's ``jax.value_and_grad`` path and the compiled recalibration pass, which must give
    TensorFlow's maps and statistics on the same saved detectors."""
    import jax  # noqa: F401 - a dev dependency: missing, this test fails rather than skips
    import keras

    from medfake.models import saliency
    from medfake.models.detector import backbone_model, build_detector, recalibrate_batchnorm

    keras.utils.set_random_seed(7)
    detector = build_detector("VGG19", 32, weights=None, head_units=(64, 32))
    detector.save(tmp_path / "vgg.keras")
    images = np.random.default_rng(0).uniform(-1000, 400, (2, 32, 32, 1)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    expected = saliency.grad_cam(detector, images, positive=False)
    mobilenet = build_detector("MobileNetV3Large", 32, weights=None)
    mobilenet.save(tmp_path / "mobilenet.keras")
    recalibrate_batchnorm(mobilenet, [images, images[::-1] * 0.5])
    expected_stats = [np.asarray(v) for v in backbone_model(mobilenet).non_trainable_variables]

    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", JAX_RUN, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tensorflow"] == []  # nothing of TensorFlow was imported
    assert result["status"] == "FINISHED"
    for key in ("test_auc", "test_h", "test_auc_true", "phase2_seconds", "latency_ms_mean"):
        assert key in result["metrics"], key
    assert result["params"]["model"] == "MobileNetV3Large" and result["params"]["train.bn_recalibration_batches"] == "2"
    assert result["params"]["train.ema_momentum"] == "0.98"
    maps = np.load(tmp_path / "jax_maps.npy")
    assert maps.shape == expected.shape == (2, 32, 32)
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(maps, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
    # BatchNorm recalibration (one jax.jit pass per batch there, a tf.function here): the same statistics.
    stats = np.load(tmp_path / "jax_stats.npz")
    assert len(stats.files) == len(expected_stats) > 0
    changed = 0
    for index, value in enumerate(expected_stats):
        np.testing.assert_allclose(stats[f"arr_{index}"], value, rtol=1e-3, atol=1e-5)
        changed += not np.allclose(value, 0.0) and not np.allclose(value, 1.0)
    assert changed > 0  # the passes really moved statistics away from their initial 0 / 1
