"""The training loop's building blocks: batch order, batches from the memmap, best weights."""

import numpy as np

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
