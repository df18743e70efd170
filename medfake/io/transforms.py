"""CT pixel maths on plain arrays: HU, windowing, resizing, slice geometry — numpy in, numpy out.

HU = stored × RescaleSlope (0028,1053) + RescaleIntercept (0028,1052); the window maps
WindowCenter/WindowWidth (0028,1050/1051)-style limits to [0, 1]; slices are ordered along the
normal of ImageOrientationPatient (0020,0037) using ImagePositionPatient (0020,0032).
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np


def to_hu(stored: np.ndarray, slope: float = 1.0, intercept: float = 0.0, out: np.ndarray | None = None) -> np.ndarray:
    """Hounsfield units (float32) from stored values: stored × RescaleSlope (0028,1053) + RescaleIntercept (0028,1052).

    With ``out`` (float32, the shape of ``stored``) the same float32 operations run in place there.
    """
    if out is None:
        hu = np.asarray(stored, dtype=np.float32) * np.float32(slope)
    else:
        out[...] = stored
        out *= np.float32(slope)
        hu = out
    hu += np.float32(intercept)
    return hu


_FLOAT32_EXACT = 2**24  # every integer of smaller magnitude is a float32, and so are sums and products below it


def hu_int16(stored: np.ndarray, slope: float, intercept: float, out: np.ndarray, *,
             stored_range: tuple[int, int] | None = None, scratch: np.ndarray | None = None) -> np.ndarray:
    """HU rounded and clipped to int16 into ``out``: the bytes of
    ``np.clip(np.rint(to_hu(stored, slope, intercept)), -32768, 32767).astype(np.int16)``.

    With an integer RescaleSlope (0028,1053) and RescaleIntercept (0028,1052) and 8/16-bit stored
    values, every float32 step of that formula is exact, so integer arithmetic gives the same
    values in fewer passes (one when the slope is 1 and ``stored_range``, the possible stored
    values, keeps the result inside int16). Otherwise the float32 formula runs, in ``scratch``
    when given.
    """
    if stored.dtype.kind in "ui" and stored.dtype.itemsize <= 2 and float(slope).is_integer() \
            and float(intercept).is_integer() and abs(slope) < _FLOAT32_EXACT:
        slope, intercept = int(slope), int(intercept)
        info = np.iinfo(stored.dtype)
        low, high = stored_range if stored_range is not None else (int(info.min), int(info.max))
        if max(abs(low), abs(high)) * abs(slope) + abs(intercept) < _FLOAT32_EXACT:
            if slope == 1 and -32768 <= low + intercept and high + intercept <= 32767:  # nothing to clip
                if stored.dtype.itemsize == 2 and high <= 32767 and -32768 <= intercept <= 32767:
                    # the stored values are int16 values already: add in int16, no casting loop
                    return np.add(stored.view(np.int16), np.int16(intercept), out=out)
                return np.add(stored, np.int32(intercept), out=out, casting="unsafe")
            wide = np.empty(stored.shape, np.int32) if scratch is None else scratch.view(np.int32)
            np.multiply(stored, np.int32(slope), out=wide, dtype=np.int32)
            wide += np.int32(intercept)
            np.clip(wide, -32768, 32767, out=wide)
            np.copyto(out, wide, casting="unsafe")
            return out
    hu = to_hu(stored, slope, intercept, out=scratch)
    np.rint(hu, out=hu)
    np.clip(hu, -32768, 32767, out=hu)
    np.copyto(out, hu, casting="unsafe")  # what .astype(np.int16) does
    return out


def window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear CT window, as WindowCenter (0028,1050) / WindowWidth (0028,1051) define it:
    [center − width/2, center + width/2] mapped to [0, 1], clipped (float32)."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    low = np.float32(center - width / 2.0)
    scaled = (np.asarray(hu, dtype=np.float32) - low) / np.float32(width)
    return np.clip(scaled, 0.0, 1.0, out=scaled)


def window_uint8(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """The window of :func:`window` as 8-bit grey levels 0–255 (for figures and PNGs)."""
    return np.rint(window(hu, center, width) * 255.0).astype(np.uint8)


@functools.lru_cache(maxsize=32)
def _axis_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) resampling matrix: area averaging when shrinking, bilinear when growing.

    Cached (read-only): a data set resizes thousands of slices between the same sizes.
    """
    if n_out <= n_in:
        scale = n_in / n_out
        starts = np.arange(n_out) * scale
        ends = starts + scale
        edges = np.arange(n_in)
        overlap = np.minimum(ends[:, None], edges[None, :] + 1) - np.maximum(starts[:, None], edges[None, :])
        weights = np.clip(overlap, 0.0, None) / scale
    else:
        centres = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        centres = np.clip(centres, 0.0, n_in - 1)
        low = np.floor(centres).astype(int)
        high = np.minimum(low + 1, n_in - 1)
        frac = centres - low
        weights = np.zeros((n_out, n_in))
        rows = np.arange(n_out)
        np.add.at(weights, (rows, low), 1.0 - frac)
        np.add.at(weights, (rows, high), frac)
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resample the last two axes (Rows (0028,0010) × Columns (0028,0011)) to (size, size), float32.

    Shrinking averages the area each output pixel covers (an exact block mean when the size
    divides evenly, e.g. 512 → 128); growing interpolates bilinearly with pixel centres aligned
    (as OpenCV's INTER_LINEAR). Leading axes (a stack of slices) are kept.
    """
    array = np.asarray(image, dtype=np.float32)
    if array.ndim < 2:
        raise ValueError(f"resize needs at least 2 dimensions, got shape {array.shape}")
    if size < 1:
        raise ValueError(f"size must be ≥ 1, got {size}")
    rows, cols = array.shape[-2:]
    if (rows, cols) == (size, size):
        return array.copy()
    if rows % size == 0 and cols % size == 0:
        fy, fx = rows // size, cols // size
        blocks = array.reshape(*array.shape[:-2], size, fy, size, fx)
        return blocks.mean(axis=(-3, -1), dtype=np.float32)
    wy = _axis_weights(rows, size)
    wx = _axis_weights(cols, size)
    return np.matmul(np.matmul(wy, array), wx.T)


def slice_normal(iop: Sequence[float]) -> np.ndarray:
    """Unit normal of a slice: row cosine × column cosine of ImageOrientationPatient (0020,0037)."""
    values = np.asarray(iop, dtype=np.float64).reshape(-1)
    if values.size != 6 or not np.all(np.isfinite(values)):
        raise ValueError(f"ImageOrientationPatient needs 6 finite numbers, got {values.size}")
    normal = np.cross(values[:3], values[3:])
    length = float(np.linalg.norm(normal))
    if length < 1e-6:
        raise ValueError("ImageOrientationPatient row and column cosines are parallel")
    return normal / length


def project_positions(ipp: np.ndarray, iop: Sequence[float]) -> np.ndarray:
    """Distance (mm) of each ImagePositionPatient (0020,0032) row (n, 3) along the slice normal."""
    positions = np.asarray(ipp, dtype=np.float64).reshape(-1, 3)
    return positions @ slice_normal(iop)
