"""The training loop's building blocks: batch order, batches from the memmap, best weights."""

import numpy as np
import pytest

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


def test_cosine_schedule_falls_from_the_base_rate_and_constant_keeps_it():
    rates = [fitting.epoch_learning_rate(1e-3, "cosine", e, 6) for e in range(6)]
    assert rates[0] == pytest.approx(1e-3)
    assert rates[3] == pytest.approx(0.5e-3)  # half way: half the rate
    assert all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] == pytest.approx(1e-3 * (1 - 0.8660254) / 2)
    assert [fitting.epoch_learning_rate(1e-5, "constant", e, 20) for e in (0, 19)] == [1e-5, 1e-5]
    with pytest.raises(ValueError, match="step"):
        fitting.epoch_learning_rate(1e-3, "step", 0, 6)


def test_run_phase_sets_each_epochs_rate_before_it_trains():
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(1.0), loss="binary_crossentropy")
    x, y = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32), np.array([[0.0], [1.0]], np.float32)
    seen = []

    def data(epoch):
        seen.append(float(model.optimizer.learning_rate.numpy()))
        return x, y

    fitting.run_phase(model, 2, 3, data, lambda: model.predict_on_batch(x), y.reshape(-1), progress=False,
                      learning_rate=lambda epoch: fitting.epoch_learning_rate(0.3, "cosine", epoch, 3))
    # data() runs before the rate is set, so epoch k sees epoch k-1's rate; after the loop, the last one.
    assert seen == pytest.approx([1.0, 0.3, 0.225])
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.075)
