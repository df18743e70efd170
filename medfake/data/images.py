"""The dataset's images.npy: the selected slices decoded, rounded to int16 HU and written row by row.

The array is that of the first version of the build — per slice,
``np.clip(np.rint(resize(hu, size)), -32768, 32767).astype(np.int16)`` — reached with fewer passes
over memory: slices are decoded in batches into reused buffers (fresh memory costs a page fault per
4 KiB written), slices stored at their own size go straight from stored values to int16 HU, and
rows are written by a thread while the next batch is decoded.

Rows of whole 4 KiB blocks (slices of 64·k pixels, e.g. the study's 512²) go to the disk with
``O_DIRECT``, around the page cache: on this project's machine (a virtual machine) every fresh
page-cache page cost ~9 µs, 3.0 s for a 512² dataset's 1.35 GB against 0.9 s for the same bytes
written direct, and the fsync that makes the cache durable then has nothing left to flush
(reports/benchmarks/preprocess.md). The header is padded to one block so that rows start on one.
"""

from __future__ import annotations

import errno
import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from medfake.io.series import DICOMSeries
from medfake.io.transforms import resize

DECODE_BATCH = 32  # slices decoded at once: bounds the memory held per series
BLOCK = 4096  # O_DIRECT needs offsets, lengths and buffer addresses in logical blocks (512 B or 4 KiB)


def npy_header(count: int, size: int) -> bytes:
    """A version 1.0 .npy header of an int16 (count, size, size) array, one BLOCK long (the format
    allows any space padding before the closing newline; numpy pads to 64 bytes)."""
    text = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(np.int16)), "fortran_order": False,
                 "shape": (count, size, size)})
    prefix = np.lib.format.magic(1, 0)
    length = BLOCK - len(prefix) - 2
    return prefix + length.to_bytes(2, "little") + text.encode("latin1").ljust(length - 1) + b"\n"


def aligned_empty(shape: tuple[int, ...]) -> np.ndarray:
    """An int16 array on page-aligned memory (anonymous mmap), as O_DIRECT writes need."""
    count = int(np.prod(shape))
    return np.frombuffer(mmap.mmap(-1, max(count * 2, 1)), dtype=np.int16, count=count).reshape(shape)


class ImageFile:
    """images.npy (int16, n × size × size), header one BLOCK long, rows written direct when they are
    whole blocks and the file system takes O_DIRECT (tmpfs does not), else through the page cache.

    The file grows as rows are written: writing into a file pre-sized with truncate measured slower.
    """

    def __init__(self, path: Path, count: int, size: int):
        self.row_bytes = size * size * np.dtype(np.int16).itemsize
        self.handle = open(path, "w+b")
        self.handle.write(npy_header(count, size))
        self.handle.flush()
        self.offset = BLOCK
        self.size = self.offset + count * self.row_bytes
        self.direct: int | None = None
        if self.row_bytes % BLOCK == 0 and hasattr(os, "O_DIRECT"):
            try:
                self.direct = os.open(path, os.O_WRONLY | os.O_DIRECT)
            except OSError:
                self.direct = None

    def write(self, rows: Sequence[int], images: np.ndarray) -> None:
        """Store ``images[j]`` (int16, C order) at row ``rows[j]``; runs of consecutive rows in one write."""
        j = 0
        while j < len(rows):
            k = j + 1
            while k < len(rows) and rows[k] == rows[k - 1] + 1:
                k += 1
            self._write_run(self.offset + rows[j] * self.row_bytes, np.ascontiguousarray(images[j:k]))
            j = k

    def _write_run(self, at: int, run: np.ndarray) -> None:
        data = memoryview(run).cast("B")
        if self.direct is not None and run.ctypes.data % BLOCK == 0:
            try:
                while data:  # a direct write may be short; the rest stays block-aligned
                    done = os.pwrite(self.direct, data, at)
                    data, at = data[done:], at + done
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._stop_direct()  # the file system refused it after all: the page cache from here
        self.handle.seek(at)
        self.handle.write(data)

    def _stop_direct(self) -> None:
        if self.direct is not None:
            os.close(self.direct)
            self.direct = None

    def close(self) -> None:
        # fsync before the folder is renamed into place: a system crash must not leave a
        # complete-looking dataset with missing images (direct writes leave it little to flush)
        try:
            self._stop_direct()
            self.handle.truncate(self.size)  # every row is written; this only guards the length
            self.handle.flush()
            os.fsync(self.handle.fileno())
        finally:
            self._stop_direct()
            self.handle.close()


def write_images(path: Path, count: int, size: int, jobs: Sequence[tuple[DICOMSeries, list[int], list[int]]],
                 lap: Callable[[str], None] = lambda phase: None, progress: bool = False) -> int:
    """Write images.npy of ``count`` rows from ``jobs`` — (series, rows, sorted slice indices) — and
    return the number of slices decoded. ``lap(phase)`` is called after each phase of each batch
    ("decode", "resize", "write") so that the caller can time them.

    One thread writes a batch to the file while the next one is decoded (file reads and writes and
    numpy release the GIL); "write" is then the time spent waiting for the writer.
    """
    from tqdm import tqdm

    images = ImageFile(path, count, size)
    stored = [aligned_empty((DECODE_BATCH, size, size)) for _ in range(2)]  # one filling, one writing
    writes: list[Future | None] = [None, None]
    hu_buffers: dict[tuple[int, int], np.ndarray] = {}
    decoded, turn = 0, 0
    lap("write")
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="images.npy") as writer:
            for series, rows, positions in tqdm(jobs, desc="decoding selected slices", unit="series",
                                                disable=not progress):
                shape = (series.rows, series.columns)
                for first in range(0, len(rows), DECODE_BATCH):
                    batch = slice(first, first + DECODE_BATCH)
                    n = len(rows[batch])
                    if writes[turn] is not None:
                        writes[turn].result()  # this buffer's previous batch is on disk (or raises)
                        lap("write")
                    out = stored[turn][:n]
                    if shape == (size, size):
                        series.read_hu_int16(positions[batch], out=out)
                        lap("decode")
                    else:
                        if shape not in hu_buffers:
                            hu_buffers[shape] = np.empty((DECODE_BATCH, *shape), dtype=np.float32)
                        hu = series.read_hu(positions[batch], out=hu_buffers[shape][:n])
                        lap("decode")
                        for j, image in enumerate(hu):
                            scaled = resize(image, size)
                            np.rint(scaled, out=scaled)
                            np.clip(scaled, -32768, 32767, out=scaled)
                            np.copyto(out[j], scaled, casting="unsafe")  # what .astype(np.int16) does
                        lap("resize")
                    writes[turn] = writer.submit(images.write, rows[batch], out)
                    decoded += n
                    turn = 1 - turn
            for pending in writes:
                if pending is not None:
                    pending.result()
            lap("write")
    finally:
        images.close()
    return decoded
