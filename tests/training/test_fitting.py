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
