"""The dataset's images.npy: the selected slices decoded, rounded to int16 HU and written row by row.

The bytes are those of the first version of the build — per slice,
``np.clip(np.rint(resize(hu, size)), -32768, 32767).astype(np.int16)`` stored with
``np.lib.format.open_memmap`` — reached with fewer passes over memory: slices are decoded in
batches into reused buffers (fresh memory costs a page fault per 4 KiB written), slices stored at
their own size go straight from stored values to int16 HU, and rows are written with plain file
writes (no mapping to fault in, no msync of the whole file) by a thread, while the next batch is
decoded.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from medfake.io.series import DICOMSeries
from medfake.io.transforms import resize

DECODE_BATCH = 32  # slices decoded at once: bounds the memory held per series


class ImageFile:
    """images.npy (int16, n × size × size) with the header ``np.lib.format.open_memmap`` writes.

    The file grows as rows are written: writing into a file pre-sized with truncate measured slower.
    """

    def __init__(self, path: Path, count: int, size: int):
        self.row_bytes = size * size * np.dtype(np.int16).itemsize
        self.handle = open(path, "w+b")
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.int16)), "fortran_order": False,
                  "shape": (count, size, size)}
        np.lib.format.write_array_header_1_0(self.handle, header)
        self.offset = self.handle.tell()
        self.size = self.offset + count * self.row_bytes

    def write(self, rows: Sequence[int], images: np.ndarray) -> None:
        """Store ``images[j]`` (int16, C order) at row ``rows[j]``; runs of consecutive rows in one write."""
        j = 0
        while j < len(rows):
            k = j + 1
            while k < len(rows) and rows[k] == rows[k - 1] + 1:
                k += 1
            self.handle.seek(self.offset + rows[j] * self.row_bytes)
            self.handle.write(memoryview(np.ascontiguousarray(images[j:k])).cast("B"))
            j = k

    def close(self) -> None:
        try:
            self.handle.truncate(self.size)  # every row is written; this only guards the length
            # on disk before the cache folder is renamed into place: a crash must not leave a
            # complete-looking dataset with missing images (the memmap's msync did this before)
            self.handle.flush()
            os.fsync(self.handle.fileno())
        finally:
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
    stored = [np.empty((DECODE_BATCH, size, size), dtype=np.int16) for _ in range(2)]  # one filling, one writing
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
