"""CT-GAN-like local tampers (study section 3.2): a cube re-synthesised with a generator-like texture.

FM injects a nodule, FB in-paints a real one away; the cube's border is blended into the slice.

The phantom's two experiments use two generator settings (:data:`EXPERIMENT_STYLES`): experiment
2's tampers have a smoother, weaker-checkerboard texture, a sharper copy of the anatomy and a wider
blending roll-off. This is a simulated domain shift, stated so a detector's cross-experiment
generalisation can be measured on the phantom; it is not a claim about how real CT-GAN's two
experiments differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medfake.data.phantom.labels import FAKE_TYPES


# Generator texture inside a tamper cube: it keeps the HU level of what it replaces, with a spread
# of the same order as the scanner noise, but a different spectrum (smooth blobs + the period-2
# checkerboard of transposed convolutions). The amplitude is tuned so that a whole-slice HU
# histogram stays uninformative (the cube is < 1.6 % of a slice) while a small CNN learns the trace.
CHECKER_HU = 30.0            # checkerboard amplitude, HU
TEXTURE_BLUR_PX = 1.5        # correlation length of the smooth part of the generator texture
ANATOMY_BLUR_PX = 1.0        # the generator reproduces the anatomy in its cube slightly blurred
FLAT_FRACTION = 0.75         # blending window: flat up to this fraction of the half-size


@dataclass(frozen=True)
class GeneratorStyle:
    """One generator setting: the texture and blending of its cube (defaults: experiment 1)."""

    checker_hu: float = CHECKER_HU
    texture_blur_px: float = TEXTURE_BLUR_PX
    anatomy_blur_px: float = ANATOMY_BLUR_PX
    flat_fraction: float = FLAT_FRACTION


# The simulated shift between the phantom's experiments. Experiment 2 is not easier: the same
# texture spread (the scanner noise), a weaker checkerboard, a sharper anatomy copy and a softer
# border all leave less of a trace than experiment 1's setting.
EXPERIMENT_STYLES = {
    "exp1": GeneratorStyle(),
    "exp2": GeneratorStyle(checker_hu=20.0, texture_blur_px=2.5, anatomy_blur_px=0.7, flat_fraction=0.55),
}


@dataclass(frozen=True)
class Tamper:
    """One CT-GAN-like tamper: FM injects a nodule, FB in-paints one away, inside a blended cube.

    (slice, row, col) is the centre and the label; the tamper really changes slices
    ``z_first..z_last`` (inclusive) within rows/columns ``centre ± half_size``.
    """

    kind: str
    slice: int
    row: int
    col: int
    z_first: int
    z_last: int
    half_size: int
    nodule_radius_px: float
    nodule_hu: float = 60.0
    nodule_half_slices: float | None = None  # FB: z half-extent of the real nodule; FM: the tamper's extent
    texture_sigma: float | None = None       # HU; None: estimated from the cube
    seed: int = 0
    style: GeneratorStyle = GeneratorStyle()

    def box(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the cube in one slice, x = column, exclusive upper bounds."""
        rows, cols = shape[-2], shape[-1]
        return (max(self.col - self.half_size, 0), max(self.row - self.half_size, 0),
                min(self.col + self.half_size, cols), min(self.row + self.half_size, rows))

    def slices(self) -> range:
        return range(self.z_first, self.z_last + 1)


def _blend_window(n: int, centre_offset: int, half: int, flat_fraction: float = FLAT_FRACTION) -> np.ndarray:
    """1-D window: 1 in the middle, cosine roll-off to 0 at the cube's faces."""
    u = np.abs(np.arange(n) - centre_offset + 0.5) / half
    ramp = np.clip((u - flat_fraction) / (1 - flat_fraction), 0.0, 1.0)
    return (np.cos(ramp * np.pi / 2) ** 2).astype(np.float32)


def generator_texture(rng: np.random.Generator, rows: range, cols: range, sigma: float,
                      style: GeneratorStyle = GeneratorStyle()) -> np.ndarray:
    """Generator-like texture, zero mean: smooth blobs (std ≥ sigma/2) plus a period-2 checkerboard."""
    from scipy import ndimage

    shape = (len(rows), len(cols))
    smooth = ndimage.gaussian_filter(rng.standard_normal(shape), style.texture_blur_px, mode="wrap")
    smooth = (smooth - smooth.mean()) / (smooth.std() + 1e-9)
    smooth_sigma = math.sqrt(max(sigma**2 - style.checker_hu**2, 0.25 * sigma**2))
    return (smooth_sigma * smooth + style.checker_hu * checkerboard(rows, cols)).astype(np.float32)


def checkerboard(rows: range, cols: range) -> np.ndarray:
    """+1/-1 pattern of period 2 px in absolute image coordinates (+1 where row + column is even)."""
    return np.where((np.add.outer(np.asarray(rows), np.asarray(cols)) % 2) == 0, 1.0, -1.0)


def tamper(volume: np.ndarray, spec: Tamper, in_place: bool = False) -> np.ndarray:
    """The HU volume with one CT-GAN-like tamper applied (cube-local, border-blended).

    Inside the cube the generator (``spec.style``) re-synthesises the slice: the anatomy slightly blurred, the
    nodule injected (FM) or in-painted with the surrounding lung level (FB), and the scanner noise
    replaced by :func:`generator_texture`; a flat-topped cosine window blends it into the slice.
    A copy unless ``in_place`` (then ``volume`` must be float32).
    """
    from scipy import ndimage

    if spec.kind not in FAKE_TYPES:
        raise ValueError(f"tamper kind must be one of {FAKE_TYPES}, got {spec.kind!r}")
    out = volume if in_place else np.array(volume, dtype=np.float32, copy=True)
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(13,)))
    x0, y0, x1, y1 = spec.box(volume.shape)
    rows, cols = range(y0, y1), range(x0, x1)
    style = spec.style
    window = np.outer(_blend_window(len(rows), spec.row - y0, spec.half_size, style.flat_fraction),
                      _blend_window(len(cols), spec.col - x0, spec.half_size, style.flat_fraction))
    yy = (np.arange(y0, y1) - spec.row)[:, None]
    xx = (np.arange(x0, x1) - spec.col)[None, :]
    dist = np.sqrt(yy * yy + xx * xx).astype(np.float32)
    for index in spec.slices():
        if not 0 <= index < volume.shape[0]:
            continue
        cube = out[index, y0:y1, x0:x1]
        base = ndimage.gaussian_filter(cube, style.anatomy_blur_px, mode="nearest")
        if spec.texture_sigma is not None:
            sigma = spec.texture_sigma
        else:
            residual = cube - base  # robust estimate of the scanner noise the texture replaces
            sigma = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
        offset = index - spec.slice
        half_z = spec.nodule_half_slices
        if half_z is None:
            half_z = (spec.slice - spec.z_first if offset < 0 else spec.z_last - spec.slice) + 0.5
        fraction = offset / half_z if half_z > 0 else 2.0
        radius = spec.nodule_radius_px * math.sqrt(max(1 - fraction * fraction, 0.0))
        if spec.kind == "FM" and radius > 0.3:
            edge = max(1.0, 0.3 * radius)
            alpha = np.clip(0.5 - (dist - radius) / edge, 0.0, 1.0)
            base += alpha * (spec.nodule_hu - base)
        elif spec.kind == "FB" and abs(fraction) < 1.0:
            cover = radius + 1.5
            alpha = np.clip(0.5 - (dist - cover) / 1.5, 0.0, 1.0)
            ring = base[(dist > cover + 1) & (dist <= cover + 4)]
            lung_like = ring[ring < -500]
            surround = float(np.median(lung_like if lung_like.size >= 4 else ring if ring.size else base))
            base += alpha * (surround - base)
        synthetic = base + generator_texture(rng, rows, cols, sigma, style)
        cube += window * (synthetic - cube)
    return out
