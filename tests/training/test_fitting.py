"""The training loop's building blocks: batch order, batches from the memmap, best weights."""

import numpy as np
import pytest

from medfake.models.detector import dtype_policy
from medfake.training import fitting


def test_epoch_order_depends_only_on_seed_phase_epoch():
    a = fitting.epoch_order(3, 1, 0, 50)
    assert np.array_equal(a, fitting.epoch_order(3, 1, 0, 50))
    assert not np.array_equal(a, fitting.epoch_order(3, 1, 1, 50))
    assert not np.array_equal(a, fitting.epoch_order(3, 2, 0, 50))
    assert sorted(a) == list(range(50))


def test_image_batches_pair_rows_with_their_labels():
    images = np.arange(12 * 2 * 2, dtype=np.int16).reshape(12, 2, 2)
    rows = np.array([9, 2, 11, 5, 0])
    labels = np.array([1, 0, 1, 1, 0])
    batches = fitting.image_batches(images, rows, labels, batch_size=2)
    assert len(batches) == 3
    seen_rows, seen_labels = [], []
    for i in range(len(batches)):
        x, y = batches[i]
        assert x.dtype == np.float32 and x.shape[1:] == (2, 2, 1)
        seen_rows += [int(img[0, 0, 0]) // 4 for img in x]
        seen_labels += y[:, 0].astype(int).tolist()
    assert seen_rows == rows.tolist() and seen_labels == labels.tolist()


def test_bce_matches_definition():
    y = np.array([1, 0, 1])
    p = np.array([0.9, 0.2, 0.6])
    expected = -np.mean([np.log(0.9), np.log(0.8), np.log(0.6)])
    assert abs(fitting.bce(y, p) - expected) < 1e-9


def test_an_epoch_batch_by_batch_trains_as_keras_fit_does():
    import keras

    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (11, 4, 4)).astype(np.float32).astype(np.int16) + np.arange(11)[:, None, None].astype(np.int16)
    labels = (np.arange(11) % 2).astype(np.float32)
    order = fitting.epoch_order(1, 2, 0, 11)

    def model():
        keras.utils.set_random_seed(5)
        m = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
        m.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
        return m

    ours, theirs = model(), model()
    for epoch in range(2):
        batches = fitting.image_batches(images, order, labels[order], batch_size=4)  # 4 + 4 + 3: a short last batch
        loss = fitting.train_epoch(ours, batches)
        history = theirs.fit(batches, None, epochs=1, verbose=0, shuffle=False)
        assert loss == pytest.approx(history.history["loss"][-1], rel=1e-5)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _averaging_run(average: bool, momentum: float, epochs: int = 2, precision: str = "float32"):
    """A small model through ``run_phase`` with Adam's weight average; returns the model, the phase state
    and the trainable weights after every step (recorded as each batch is fetched and after each epoch)."""
    import keras

    rng = np.random.default_rng(3)
    images = rng.normal(0, 50, (12, 4, 4)).astype(np.int16)
    labels = (np.arange(12) % 2).astype(np.float32)
    keras.utils.set_random_seed(5)
    with dtype_policy(precision):
        model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3, activation="relu"),
                                  keras.layers.Dense(1, activation="sigmoid", dtype="float32")])
        model.compile(optimizer=keras.optimizers.Adam(5e-2, use_ema=True, ema_momentum=momentum), loss="binary_crossentropy")
    steps: list[list[np.ndarray]] = []

    class Recorded(keras.utils.PyDataset):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            steps.append([keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables])
            return self.inner[i]

    def data(epoch):
        order = fitting.epoch_order(1, 2, epoch, 12)
        return Recorded(fitting.image_batches(images, order, labels[order], batch_size=4)), None

    def val():
        return fitting.predict_images(model, images[..., None].astype(np.float32), 4)

    def record(epoch, logs):  # after validation: the training weights are back
        steps.append([keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables])

    state = fitting.run_phase(model, 2, epochs, data, val, labels, on_epoch=record, progress=False, average=average)
    return model, state, steps[1:]  # steps[0]: the weights before the first step


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])  # bfloat16: float32 weights, bfloat16 compute
def test_averaging_validates_and_keeps_the_moving_average_and_trains_as_without(precision):
    momentum = 0.6
    plain, plain_state, _ = _averaging_run(False, momentum, epochs=2, precision=precision)
    averaged, state, after_step = _averaging_run(True, momentum, epochs=1, precision=precision)
    # One epoch: what is kept is the moving average of the weights after each step (the first step
    # starts it), not the last step's weights (`after_step[-1]`, recorded after validation).
    expected = after_step[0]
    for weights in after_step[1:3]:
        expected = [momentum * a + (1 - momentum) * w for a, w in zip(expected, weights)]
    kept = [np.asarray(w) for w in averaged.get_weights()]
    for a, b in zip(kept, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(kept[0], after_step[-1][0]) and not np.allclose(kept[0], plain.get_weights()[0])
    # Validation scored the average; training followed the raw weights: the two runs' epoch-0 losses match.
    assert state.history[0]["loss"] == pytest.approx(plain_state.history[0]["loss"], rel=1e-6)
    assert state.history[0]["val_loss"] != pytest.approx(plain_state.history[0]["val_loss"], rel=1e-3)


def test_averaged_weights_restores_the_training_weights():
    import keras

    model, _, _ = _averaging_run(False, 0.5, epochs=1)
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables]
    with fitting.averaged_weights(model):
        inside = [keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables]
    after = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    assert not np.allclose(inside[0], before[0])
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
