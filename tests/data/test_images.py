"""medfake.data.images: images.npy written direct (O_DIRECT) or through the page cache, same file."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from medfake.data.images import BLOCK, ImageFile, aligned_empty, npy_header


NO_DIRECT = "{}: this file system refused O_DIRECT (tmpfs, or not Linux): run the tests with TMPDIR on a disk"


def _rows(count: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(-1024, 3000, (count, size, size)).astype(np.int16)


def _write(path, rows: np.ndarray, order: list[int]) -> ImageFile:
    """Write ``rows`` out of order, in runs of consecutive rows and single ones, as the build does."""
    count, size = rows.shape[0], rows.shape[1]
    file = ImageFile(path, count, size)
    buffer = aligned_empty(rows.shape)
    try:
        for first in range(0, len(order), 3):
            chosen = order[first:first + 3]
            buffer[: len(chosen)] = rows[chosen]
            file.write(chosen, buffer[: len(chosen)])
    finally:
        file.close()
    return file


@pytest.mark.parametrize("size", [64, 48])  # 64² int16 rows are 2 blocks: direct; 48² are not
def test_the_file_is_the_array_with_a_one_block_header(tmp_path, size):
    rows = _rows(10, size)
    order = [4, 5, 6, 0, 1, 9, 2, 3, 7, 8]
    file = _write(tmp_path / "images.npy", rows, order)
    assert (file.row_bytes % BLOCK == 0) == (size == 64)
    loaded = np.load(tmp_path / "images.npy", mmap_mode="r")
    assert loaded.dtype == np.int16 and loaded.shape == rows.shape
    np.testing.assert_array_equal(loaded, rows)
    raw = (tmp_path / "images.npy").read_bytes()
    assert len(raw) == BLOCK + rows.nbytes and raw[:BLOCK] == npy_header(10, size) and raw[BLOCK:] == rows.tobytes()


def test_rows_of_whole_blocks_go_direct_where_the_file_system_takes_it(tmp_path, monkeypatch):
    """O_DIRECT bypasses the page cache; where open or a write refuses it (tmpfs: EINVAL) the same
    bytes go through the page cache instead."""
    rows = _rows(6, 64)
    writes = []
    real_pwrite = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, data, at: writes.append(at) or real_pwrite(fd, data, at))
    file = _write(tmp_path / "direct.npy", rows, [0, 1, 2, 3, 4, 5])
    assert file.direct is None  # closed
    # ext4 and xfs (this project's machines) take O_DIRECT: every row went direct, block-aligned
    # (a file system that refuses it at open, tmpfs, writes nothing direct: the cases below)
    assert writes == [BLOCK + r * file.row_bytes for r in range(0, 6, 3)], NO_DIRECT.format(tmp_path)

    def refuse(fd, data, at):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "pwrite", refuse)
    _write(tmp_path / "refused.npy", rows, [3, 4, 5, 0, 1, 2])
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    real_open = os.open

    def no_direct_open(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct_open)
    _write(tmp_path / "unopened.npy", rows, [5, 4, 3, 2, 1, 0])
    same = (tmp_path / "direct.npy").read_bytes()
    assert (tmp_path / "refused.npy").read_bytes() == same == (tmp_path / "unopened.npy").read_bytes()


def test_a_direct_write_error_other_than_einval_stops_the_build(tmp_path, monkeypatch):
    file = ImageFile(tmp_path / "images.npy", 2, 64)
    assert file.direct is not None, NO_DIRECT.format(tmp_path)

    def full(fd, data, at):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    buffer = aligned_empty((2, 64, 64))
    with pytest.raises(OSError, match="No space left"):
        file.write([0, 1], buffer)
    file.close()
