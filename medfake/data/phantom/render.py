"""Rendering of the phantom: anti-aliased organs, vessels and nodules in HU, plus scanner-like noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from medfake.data.phantom.anatomy import AIR, BLOOD, Nodule, ScanAnatomy, Shape, make_anatomy, slice_shapes


def _paint(image: np.ndarray, lung: np.ndarray, coords: np.ndarray, shape: Shape, pixel_mm: float) -> None:
    """Blend one anti-aliased ellipse into the HU image (and the lung map) inside its bounding box."""
    reach = max(shape.ax, shape.ay) + 2 * pixel_mm + shape.edge_mm
    cols = _index_range(coords, shape.cx - reach, shape.cx + reach)
    rows = _index_range(coords, shape.cy - reach, shape.cy + reach)
    if cols.start >= cols.stop or rows.start >= rows.stop:
        return
    x = coords[cols] - np.float32(shape.cx)
    y = coords[rows] - np.float32(shape.cy)
    ax, ay = np.float32(shape.ax), np.float32(shape.ay)
    if shape.angle == 0.0:  # separable: most shapes are axis-aligned
        r2 = (y / ay)[:, None] ** 2 + (x / ax)[None, :] ** 2
        g2 = (y / (ay * ay))[:, None] ** 2 + (x / (ax * ax))[None, :] ** 2
    else:
        c, s = np.float32(math.cos(shape.angle)), np.float32(math.sin(shape.angle))
        u = x[None, :] * c + y[:, None] * s
        v = y[:, None] * c - x[None, :] * s
        r2 = (u / ax) ** 2 + (v / ay) ** 2
        g2 = (u / (ax * ax)) ** 2 + (v / (ay * ay)) ** 2
    r = np.sqrt(r2)
    # signed distance to the outline ≈ (r - 1) / |∇r|, in mm; alpha ramps over one pixel (+ edge)
    alpha = (r - 1) * r
    alpha /= np.sqrt(g2) + np.float32(1e-6)
    alpha *= np.float32(-1.0 / (pixel_mm + shape.edge_mm))
    alpha += np.float32(0.5)
    np.clip(alpha, 0.0, 1.0, out=alpha)
    patch = image[rows, cols]
    patch += alpha * (np.float32(shape.hu) - patch)
    if shape.lung is not None:
        lpatch = lung[rows, cols]
        lpatch += alpha * (np.float32(shape.lung) - lpatch)


def _index_range(coords: np.ndarray, low_mm: float, high_mm: float) -> slice:
    pixel = float(coords[1] - coords[0])
    start = int(math.floor((low_mm - coords[0]) / pixel))
    stop = int(math.ceil((high_mm - coords[0]) / pixel)) + 1
    return slice(max(start, 0), min(stop, len(coords)))


def render_vessels(a: ScanAnatomy, depth: float, coords: np.ndarray) -> np.ndarray:
    """Vessel occupancy (0..1) of one slice: distance from each pixel to the 3-D tree segments."""
    pixel = a.geometry.pixel_mm
    field_ = np.zeros((len(coords), len(coords)), dtype=np.float32)
    v = a.vessels
    if not len(v):
        return field_
    p0, p1, rad = v[:, 0:3], v[:, 3:6], v[:, 6]
    low = np.minimum(p0[:, 2], p1[:, 2]) - rad
    high = np.maximum(p0[:, 2], p1[:, 2]) + rad
    for k in np.nonzero((low <= depth) & (depth <= high))[0]:
        a0, d, r = p0[k], p1[k] - p0[k], float(rad[k])
        if abs(d[2]) > 1e-6:
            s0, s1 = sorted(((depth - r - a0[2]) / d[2], (depth + r - a0[2]) / d[2]))
            s0, s1 = max(s0, 0.0), min(s1, 1.0)
        else:
            s0, s1 = 0.0, 1.0
        ends = np.array([a0 + s0 * d, a0 + s1 * d])
        reach = r + 2 * pixel
        cols = _index_range(coords, ends[:, 0].min() - reach, ends[:, 0].max() + reach)
        rows = _index_range(coords, ends[:, 1].min() - reach, ends[:, 1].max() + reach)
        if cols.start >= cols.stop or rows.start >= rows.stop:
            continue
        wx = coords[cols][None, :] - a0[0]
        wy = coords[rows][:, None] - a0[1]
        wz = depth - a0[2]
        length2 = float(d @ d) + 1e-9
        s = np.clip((wx * d[0] + wy * d[1] + wz * d[2]) / length2, 0.0, 1.0)
        dist = np.sqrt((wx - s * d[0]) ** 2 + (wy - s * d[1]) ** 2 + (wz - s * d[2]) ** 2)
        occupancy = np.clip((r - dist) / pixel + 0.5, 0.0, 1.0) * min(1.0, 2 * r / pixel)
        np.maximum(field_[rows, cols], occupancy, out=field_[rows, cols])
    return field_


def _paint_nodule(image: np.ndarray, a: ScanAnatomy, nodule: Nodule, index: int, coords: np.ndarray) -> None:
    """A soft sphere: radius shrinks with distance from its centre slice (partial volume over the slab)."""
    g = a.geometry
    dz = max(abs(index - nodule.slice) * g.slice_mm - g.slice_mm / 2, 0.0)
    if dz >= nodule.radius_mm:
        return
    radius = math.sqrt(nodule.radius_mm**2 - dz**2)
    edge = max(g.pixel_mm, 0.3 * nodule.radius_mm)
    cx, cy = float(coords[0] + nodule.col * g.pixel_mm), float(coords[0] + nodule.row * g.pixel_mm)
    reach = radius + edge + 2 * g.pixel_mm
    cols = _index_range(coords, cx - reach, cx + reach)
    rows = _index_range(coords, cy - reach, cy + reach)
    dist = np.sqrt((coords[cols][None, :] - cx) ** 2 + (coords[rows][:, None] - cy) ** 2)
    alpha = np.clip(0.5 - (dist - radius) / edge, 0.0, 1.0)
    patch = image[rows, cols]
    patch += alpha * (nodule.hu - patch)


@lru_cache(maxsize=8)
def _noise_filter(size: int) -> np.ndarray:
    """rFFT amplitude filter giving CT-like noise (ramp × apodisation power spectrum), unit variance."""
    f = np.fft.fftfreq(size)
    radial = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    power = (radial + 0.02) * np.exp(-((radial / 0.33) ** 2))
    amplitude = np.sqrt(power)
    amplitude /= np.sqrt(np.mean(amplitude**2))
    return amplitude[:, : size // 2 + 1].astype(np.float32)


def scanner_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Correlated Gaussian noise of one slice, spectrum shaped like filtered back-projection noise."""
    import scipy.fft

    white = rng.standard_normal((size, size), dtype=np.float32)
    shaped = scipy.fft.irfft2(scipy.fft.rfft2(white, workers=1) * _noise_filter(size), s=(size, size), workers=1)
    return shaped * np.float32(sigma)


def render_slice(a: ScanAnatomy, index: int, nodules: Sequence[Nodule] = ()) -> np.ndarray:
    """Noise-free HU image of slice ``index`` (0 = top, at the neck)."""
    g = a.geometry
    coords = g.coordinates_mm
    depth = index * g.slice_mm
    t = a.t_of_depth(depth)
    image = np.full((g.size, g.size), AIR, dtype=np.float32)
    lung = np.zeros((g.size, g.size), dtype=np.float32)
    for shape in slice_shapes(a, t, "soft"):
        _paint(image, lung, coords, shape, g.pixel_mm)
    if lung.any():
        image += lung * (0.25 * coords[:, None])  # dependent (posterior) parenchyma is denser
        vessels = render_vessels(a, depth, coords)
        image += vessels * lung * (BLOOD - image)
    for nodule in nodules:
        _paint_nodule(image, a, nodule, index, coords)
    for shape in slice_shapes(a, t, "bone"):
        _paint(image, lung, coords, shape, g.pixel_mm)
    return image


def synthesize_scan(anatomy: ScanAnatomy | int, nodules: Sequence[Nodule] = (), noise: bool = True,
                    size: int = 512, slices: int = 120) -> np.ndarray:
    """HU volume (slices, rows, columns) float32 of one patient, slice 0 at the top (neck).

    ``anatomy`` is a :class:`ScanAnatomy` or a seed (then ``size``/``slices`` apply). Noise is
    independent per slice and seeded from the anatomy's seed.
    """
    a = anatomy if isinstance(anatomy, ScanAnatomy) else make_anatomy(int(anatomy), size, slices)
    g = a.geometry
    rng = np.random.default_rng(np.random.SeedSequence(a.seed, spawn_key=(12,)))
    volume = np.empty((g.slices, g.size, g.size), dtype=np.float32)
    for index in range(g.slices):
        volume[index] = render_slice(a, index, nodules)
        if noise:
            volume[index] += scanner_noise(rng, g.size, a.noise_sigma)
    np.maximum(volume, -1024.0, out=volume)
    return volume
