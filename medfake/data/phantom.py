"""The ``synth`` step: a synthetic chest-CT phantom written as DICOM in the CT-GAN and LIDC-IDRI layouts.

Real data (CT-GAN tampered scans, LIDC-IDRI) cannot be downloaded here, so this phantom is the
embedded default data and the data of every test. Each scan runs from the neck (file 0) through
the thorax to the upper abdomen, with lungs, branching vessels, bone, heart and liver, real
nodules and scanner-like correlated noise. CT-GAN-style scans carry TB/TM/FB/FM labels
(``labels_exp1.csv``, ``labels_exp2.csv``); FB/FM labels are real local tampers in the manner of
CT-GAN (study section 3.2): a ~32-voxel cube is re-synthesised with a generator-like texture,
a nodule is injected (FM) or in-painted away (FB), and the cube's border is blended. The true
z-extent of each tamper varies, sometimes inside and sometimes beyond the study's ±5 slices
(Figure 1). Ground truth goes to ``truth/`` beside the scans and never into the DICOM.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from medfake.core.errors import UserError

FORMAT = "medfake-phantom"
FORMAT_VERSION = 1
LAYOUTS = {
    # layout → (scans folder, experiment 1 folder, experiment 2 folder)
    "new": ("CT_Scans", "EXP1_blind", "EXP2_open"),
    "original": ("Tampered Scans", "Experiment 1 - Blind", "Experiment 2 - Open"),
}
EXPERIMENTS = ("exp1", "exp2")  # keys in truth/*.csv; labels_<key>.csv
LABEL_TYPES = ("TB", "TM", "FB", "FM")
FAKE_TYPES = ("FB", "FM")
TRUE_TYPES = ("TB", "TM")

# Geometry: 0.7 mm pixels at 512² (scaled with the matrix), the volume spans ~300 mm head to feet.
PIXEL_MM_AT_512 = 0.7
COVERAGE_MM = 300.0
CUBE_PX_AT_512 = 32          # CT-GAN's cube edge in voxels
CUBE_PX_MIN = 12             # smallest cube edge at any matrix
CUBE_PX_SMALL = 16           # cube edge from 128² up to 256²
SLICE_RADIUS = 5             # the study's ±5 neighbours around a label
# Slices above/below the label that a tamper really reaches, and how often each value is drawn:
# mostly about ±5 (the study's "nearly all" neighbours), sometimes narrower or wider (Figure 1).
TAMPER_HALF_EXTENT = (2, 3, 4, 5, 6, 7, 8)
TAMPER_HALF_EXTENT_WEIGHTS = (1, 1, 2, 3, 3, 2, 2)

# Hounsfield units
AIR, FAT, SOFT, BLOOD, LIVER, LUNG, BONE, MARROW = -1000.0, -100.0, 40.0, 45.0, 58.0, -850.0, 700.0, 280.0
STORED_OFFSET = 1024         # stored = HU + 1024, RescaleIntercept -1024
STORED_MAX = 4095            # BitsStored 12

# Generator texture inside a tamper cube: it keeps the HU level of what it replaces, with a spread
# of the same order as the scanner noise, but a different spectrum (smooth blobs + the period-2
# checkerboard of transposed convolutions). The amplitude is tuned so that a whole-slice HU
# histogram stays uninformative (the cube is < 1.6 % of a slice) while a small CNN learns the trace.
CHECKER_HU = 30.0            # checkerboard amplitude, HU
TEXTURE_BLUR_PX = 1.5        # correlation length of the smooth part of the generator texture
ANATOMY_BLUR_PX = 1.0        # the generator reproduces the anatomy in its cube slightly blurred
FLAT_FRACTION = 0.75         # blending window: flat up to this fraction of the half-size


# --------------------------------------------------------------------------------------------
# geometry and per-scan anatomy
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """Matrix size, pixel and slice spacing (mm) and number of slices of one scan."""

    size: int
    slices: int
    pixel_mm: float
    slice_mm: float

    @property
    def coordinates_mm(self) -> np.ndarray:
        """Centre of each row/column in mm from the image centre (x right = patient left, y down)."""
        return ((np.arange(self.size) - (self.size - 1) / 2) * self.pixel_mm).astype(np.float32)


def pixel_spacing_mm(size: int) -> float:
    """~0.7 mm at 512², scaled so the field of view stays ~358 mm at any matrix size."""
    return PIXEL_MM_AT_512 * 512 / size


def slice_spacing_mm(slices: int) -> float:
    """Spacing that makes the nominal number of slices cover ~neck to upper abdomen (2.5 mm at 120)."""
    return COVERAGE_MM / slices


def cube_size(size: int) -> int:
    """In-plane tamper cube edge in pixels (even): 32 at 512², scaled with the matrix, but at least
    16 px from 128² on (a trace a small CNN can learn) and 12 px below (64² → 12, 128² → 16)."""
    edge = max(round(CUBE_PX_AT_512 * size / 512), min(CUBE_PX_SMALL, size // 8), CUBE_PX_MIN)
    return edge + edge % 2


@dataclass(frozen=True)
class Nodule:
    """A real (untampered) nodule: a soft sphere, centre in slice/row/column units, radius in mm."""

    slice: float
    row: float
    col: float
    radius_mm: float
    hu: float


@dataclass(frozen=True)
class ScanAnatomy:
    """Everything random about one patient: body shape, organ sizes, vessel trees, noise level."""

    geometry: Geometry
    seed: int
    height_mm: float       # anatomical length that maps to t in [0, 1]
    top_offset_mm: float   # t of the first slice × height
    width: float           # left-right body scale
    depth: float           # antero-posterior body scale
    lung: float            # lung size scale
    heart: float           # heart size scale
    fat_mm: float          # subcutaneous fat thickness
    lung_hu: float         # parenchyma level
    noise_sigma: float     # scanner noise, HU per pixel
    vessels: np.ndarray = field(repr=False)  # (M, 7): x0, y0, d0, x1, y1, d1, radius (mm; d = depth below slice 0)

    def t_of_depth(self, depth_mm: float) -> float:
        return (depth_mm + self.top_offset_mm) / self.height_mm

    def depth_of_t(self, t: float) -> float:
        return t * self.height_mm - self.top_offset_mm

    def t_of_slice(self, index: float) -> float:
        return self.t_of_depth(index * self.geometry.slice_mm)

    def slice_of_t(self, t: float) -> int:
        return int(round(self.depth_of_t(t) / self.geometry.slice_mm))


def _smoothstep(a: float, b: float, t: float) -> float:
    x = min(max((t - a) / (b - a), 0.0), 1.0)
    return x * x * (3 - 2 * x)


@dataclass(frozen=True)
class _Shape:
    """An ellipse painted with a HU value; ``lung`` sets (1), clears (0) or keeps (None) the lung map."""

    cx: float
    cy: float
    ax: float
    ay: float
    hu: float
    angle: float = 0.0
    lung: float | None = None
    edge_mm: float = 0.0


def _slice_shapes(a: ScanAnatomy, t: float, stage: str) -> list[_Shape]:
    """The ellipses of one axial slice at relative height t (0 neck … 1 upper abdomen), in paint order.

    ``stage`` is "soft" (body, lungs, organs: before vessels and nodules) or "bone" (after them).
    """
    w, d = a.width, a.depth
    chest = _smoothstep(0.03, 0.20, t)
    shapes: list[_Shape] = []
    if stage == "soft":
        bx = (62 + 103 * chest) * w * (1 + 0.05 * _smoothstep(0.75, 1.0, t))
        by = (58 + 54 * chest) * d
        bcy = -5 + 10 * chest
        shoulder = 1 - _smoothstep(0.08, 0.22, t)
        body = [(0.0, bcy, bx, by)]
        if shoulder > 0.02:
            body += [(s * 118 * w, 5.0, 58 * shoulder * w, 55 * shoulder * d) for s in (-1, 1)]
        for cx, cy, ex, ey in body:
            shapes.append(_Shape(cx, cy, ex, ey, FAT))
        for cx, cy, ex, ey in body:
            shapes.append(_Shape(cx, cy, max(ex - a.fat_mm, 1.0), max(ey - a.fat_mm, 1.0), SOFT))
        cavity = _smoothstep(0.07, 0.20, t) * (1 - _smoothstep(0.86, 0.95, t))
        if cavity > 0.02:
            shapes.append(_Shape(0.0, bcy + 3, (bx - 28) * cavity, (by - 24) * cavity, 25.0))
        # lungs: grow from the apex, end at the diaphragm
        size = math.sqrt(_smoothstep(0.10, 0.32, t)) * (1 - _smoothstep(0.76, 0.84, t)) * a.lung
        if size > 0.03:
            for s in (-1, 1):
                shapes.append(_Shape(s * 74 * w, 6.0, 57 * w * size, 80 * d * size, a.lung_hu, lung=1.0))
        # diaphragm domes: liver on the patient's right (image left), stomach/spleen on the left
        liver = math.sqrt(_smoothstep(0.58, 0.80, t)) * (1 - 0.35 * _smoothstep(0.9, 1.1, t))
        if liver > 0.02:
            shapes.append(_Shape(-62 * w, 12.0, 92 * w * liver, 78 * d * liver, LIVER, lung=0.0, edge_mm=2.0))
        left = math.sqrt(_smoothstep(0.64, 0.84, t))
        if left > 0.02:
            shapes.append(_Shape(68 * w, 12.0, 78 * w * left, 70 * d * left, 35.0, lung=0.0, edge_mm=2.0))
            gas = _smoothstep(0.70, 0.78, t) * (1 - _smoothstep(0.9, 1.0, t))
            if gas > 0.05:
                shapes.append(_Shape(52 * w, -32.0, 24 * gas * w, 18 * gas * d, AIR, lung=0.0))
            spleen = _smoothstep(0.76, 0.84, t)
            if spleen > 0.05:
                shapes.append(_Shape(98 * w, 48.0, 28 * spleen * w, 40 * spleen * d, 48.0, angle=0.5, lung=0.0))
        kidney = _smoothstep(0.86, 0.93, t)
        if kidney > 0.05:
            for s in (-1, 1):
                shapes.append(_Shape(s * 66 * w, 48.0, 26 * kidney, 38 * kidney, 32.0, angle=s * 0.35, lung=0.0))
        # heart with epicardial fat
        heart = _smoothstep(0.40, 0.50, t) * (1 - _smoothstep(0.68, 0.77, t)) * a.heart
        if heart > 0.03:
            shapes.append(_Shape(24 * w, -14.0, 66 * heart * w, 54 * heart * d, -90.0, angle=-0.45, lung=0.0))
            shapes.append(_Shape(24 * w, -14.0, 60 * heart * w, 48 * heart * d, 42.0, angle=-0.45, lung=0.0))
        # aorta: ascending, arch, descending
        if 0.27 < t < 0.46:
            shapes.append(_Shape(8.0, -20.0, 14.0, 14.0, BLOOD, lung=0.0))
        if 0.23 < t < 0.28:
            shapes.append(_Shape(14.0, 12.0, 13.0, 40.0, BLOOD, angle=-0.3, lung=0.0))
        if 0.25 < t:
            x = 22 * w - 16 * _smoothstep(0.75, 0.95, t)
            shapes.append(_Shape(x, 42 * d, 12.0, 12.0, BLOOD, lung=0.0))
        # trachea and main bronchi: air with a soft wall, not lung
        if t < 0.37:
            ty = -25 + 15 * _smoothstep(0.0, 0.35, t)
            shapes.append(_Shape(0.0, ty, 11.0, 10.0, 20.0, lung=0.0))
            shapes.append(_Shape(0.0, ty, 8.5, 7.5, AIR, lung=0.0))
        elif t < 0.45:
            spread = 12 + 260 * (t - 0.37)
            for s in (-1, 1):
                shapes.append(_Shape(s * spread, -10.0, 7.5, 7.0, 20.0, lung=0.0))
                shapes.append(_Shape(s * spread, -10.0, 5.5, 5.0, AIR, lung=0.0))
        return shapes

    # bone
    vy = (8 + 54 * chest) * d
    k = 0.7 + 0.3 * chest  # vertebrae are smaller in the neck
    shapes += [
        _Shape(0.0, vy, 17.0 * k, 15.0 * k, BONE, lung=0.0),
        _Shape(0.0, vy, 13.0 * k, 11.5 * k, MARROW),
        _Shape(0.0, vy + 31 * k, 19.0 * k, 6.0 * k, 600.0, lung=0.0),
        _Shape(0.0, vy + 42 * k, 4.5 * k, 10.0 * k, 650.0, lung=0.0),
        _Shape(0.0, vy + 24 * k, 8.0 * k, 7.0 * k, 30.0),
    ]
    if 0.11 < t < 0.82:
        bx = (62 + 103 * chest) * w
        by = (58 + 54 * chest) * d
        cavity = _smoothstep(0.07, 0.20, t)
        px, py = (bx - 28) * cavity + 7, (by - 24) * cavity + 7
        phase = (a.depth_of_t(t) / 24.0) % 1.0
        start, stop, count = math.radians(28), math.radians(160), 6
        step = (stop - start) / count
        for s in (-1, 1):
            for k in range(count):
                theta = start + (k + phase) * step
                cx, cy = s * px * math.sin(theta), 8 + py * math.cos(theta)
                tangent = math.atan2(-py * math.sin(theta), s * px * math.cos(theta))
                shapes.append(_Shape(cx, cy, 9.0, 4.5, BONE, angle=tangent, lung=0.0))
        if 0.2 < t < 0.62:
            shapes.append(_Shape(0.0, -(py + 3), 14.0, 6.5, 600.0, lung=0.0))
    if 0.10 < t < 0.42:  # scapulae: thin plates in the posterior chest wall, outside the ribs
        bx = (62 + 103 * chest) * w
        by = (58 + 54 * chest) * d
        theta = math.radians(52)
        for s in (-1, 1):
            cx, cy = s * (bx - 14) * math.sin(theta), (by - 12) * math.cos(theta)
            tangent = math.atan2(-(by - 12) * math.sin(theta), s * (bx - 14) * math.cos(theta))
            shapes.append(_Shape(cx, cy, 34.0, 3.5, 650.0, angle=tangent, lung=0.0))
    if 0.05 < t < 0.16:
        for s in (-1, 1):
            shapes.append(_Shape(s * 62 * w, -44.0, 52.0, 6.0, 650.0, angle=s * 0.18, lung=0.0))
    shoulder = 1 - _smoothstep(0.06, 0.16, t)
    if shoulder > 0.1:
        for s in (-1, 1):
            shapes.append(_Shape(s * 136 * w, 8.0, 24 * shoulder, 24 * shoulder, BONE))
            shapes.append(_Shape(s * 136 * w, 8.0, 18 * shoulder, 18 * shoulder, MARROW))
    return shapes


def _inside(shape: _Shape, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray | bool:
    c, s = math.cos(shape.angle), math.sin(shape.angle)
    u = (x - shape.cx) * c + (y - shape.cy) * s
    v = -(x - shape.cx) * s + (y - shape.cy) * c
    return (u / shape.ax) ** 2 + (v / shape.ay) ** 2 <= 1.0


def _lung_points(a: ScanAnatomy, t: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which points (mm, arrays) of the slice at relative height t lie in lung parenchyma."""
    lung = np.zeros(np.shape(x), dtype=bool)
    for stage in ("soft", "bone"):
        for shape in _slice_shapes(a, t, stage):
            if shape.lung is not None:
                lung = np.where(_inside(shape, x, y), shape.lung > 0.5, lung)
    return lung


def _sample_lung_point(a: ScanAnatomy, t: float, rng: np.random.Generator, margin_mm: float,
                       tries: int = 200) -> tuple[float, float] | None:
    """A random point in the lungs at least ``margin_mm`` from any other tissue, or None."""
    half = a.geometry.size * a.geometry.pixel_mm / 2
    x = rng.uniform(-0.8 * half, 0.8 * half, tries)
    y = rng.uniform(-0.6 * half, 0.6 * half, tries)
    angles = np.linspace(0, 2 * np.pi, 9)
    xs = np.concatenate([x[:, None], x[:, None] + margin_mm * np.cos(angles[None, :-1])], axis=1)
    ys = np.concatenate([y[:, None], y[:, None] + margin_mm * np.sin(angles[None, :-1])], axis=1)
    ok = np.nonzero(_lung_points(a, t, xs, ys).all(axis=1))[0]
    return (float(x[ok[0]]), float(y[ok[0]])) if len(ok) else None


def _vessel_tree(a: ScanAnatomy, side: int, rng: np.random.Generator, leaves: int) -> np.ndarray:
    """A branching tree from the hilum that fills one lung (recursive median splits of target points)."""
    half = a.geometry.size * a.geometry.pixel_mm / 2
    candidates = []
    for t in rng.uniform(0.13, 0.80, 48):
        x = side * rng.uniform(10, 0.8 * half, 48)
        y = rng.uniform(-0.55 * half, 0.55 * half, 48)
        inside = _lung_points(a, t, x, y)
        candidates.append(np.stack([x[inside], y[inside], np.full(inside.sum(), a.depth_of_t(t))], axis=1))
    pool = np.concatenate(candidates)
    if not len(pool):
        return np.zeros((0, 7), dtype=np.float32)
    targets = pool[rng.permutation(len(pool))[:leaves]].astype(np.float64)
    root = np.array([side * 36 * a.width, 2.0, a.depth_of_t(0.45)])
    segments: list[tuple[float, ...]] = []
    total = len(targets)

    def radius(n: int) -> float:
        return 0.8 + 6.0 * (n / total) ** 0.5

    stack = [(root, targets)]
    while stack:
        start, group = stack.pop()
        if len(group) == 1:
            end = group[0]
            segments.append((*start, *end, radius(1)))
            continue
        axis = int(np.argmax(group.var(axis=0)))
        order = np.argsort(group[:, axis] + rng.normal(0, 1e-3, len(group)))
        for part in (group[order[: len(group) // 2]], group[order[len(group) // 2:]]):
            end = start + rng.uniform(0.3, 0.55) * (part.mean(axis=0) - start)
            segments.append((*start, *end, radius(len(part))))
            stack.append((end, part))
    return np.asarray(segments, dtype=np.float32)


def make_anatomy(seed: int, size: int = 512, slices: int = 120, nominal_slices: int | None = None) -> ScanAnatomy:
    """Random anatomy of one patient; ``nominal_slices`` sets the spacing (default: ``slices``)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(11,)))
    geometry = Geometry(size, slices, pixel_spacing_mm(size), slice_spacing_mm(nominal_slices or slices))
    height = COVERAGE_MM * rng.uniform(0.95, 1.05)
    anatomy = ScanAnatomy(
        geometry=geometry, seed=seed, height_mm=height, top_offset_mm=rng.uniform(-5, 5),
        width=rng.uniform(0.92, 1.06), depth=rng.uniform(0.92, 1.06), lung=rng.uniform(0.92, 1.04),
        heart=rng.uniform(0.9, 1.1), fat_mm=rng.uniform(8, 18), lung_hu=LUNG + rng.uniform(-20, 20),
        noise_sigma=rng.uniform(10, 25), vessels=np.zeros((0, 7), dtype=np.float32),
    )
    tree = np.concatenate([_vessel_tree(anatomy, s, rng, leaves=200) for s in (-1, 1)])
    return dataclasses.replace(anatomy, vessels=tree)


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------
def _paint(image: np.ndarray, lung: np.ndarray, coords: np.ndarray, shape: _Shape, pixel_mm: float) -> None:
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


def _render_vessels(a: ScanAnatomy, depth: float, coords: np.ndarray) -> np.ndarray:
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
    for shape in _slice_shapes(a, t, "soft"):
        _paint(image, lung, coords, shape, g.pixel_mm)
    if lung.any():
        image += lung * (0.25 * coords[:, None])  # dependent (posterior) parenchyma is denser
        vessels = _render_vessels(a, depth, coords)
        image += vessels * lung * (BLOOD - image)
    for nodule in nodules:
        _paint_nodule(image, a, nodule, index, coords)
    for shape in _slice_shapes(a, t, "bone"):
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


# --------------------------------------------------------------------------------------------
# tampering
# --------------------------------------------------------------------------------------------
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

    def box(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the cube in one slice, x = column, exclusive upper bounds."""
        rows, cols = shape[-2], shape[-1]
        return (max(self.col - self.half_size, 0), max(self.row - self.half_size, 0),
                min(self.col + self.half_size, cols), min(self.row + self.half_size, rows))

    def slices(self) -> range:
        return range(self.z_first, self.z_last + 1)


def _blend_window(n: int, centre_offset: int, half: int) -> np.ndarray:
    """1-D window: 1 in the middle, cosine roll-off to 0 at the cube's faces."""
    u = np.abs(np.arange(n) - centre_offset + 0.5) / half
    ramp = np.clip((u - FLAT_FRACTION) / (1 - FLAT_FRACTION), 0.0, 1.0)
    return (np.cos(ramp * np.pi / 2) ** 2).astype(np.float32)


def generator_texture(rng: np.random.Generator, rows: range, cols: range, sigma: float) -> np.ndarray:
    """Generator-like texture, zero mean: smooth blobs (std ≥ sigma/2) plus a period-2 checkerboard."""
    from scipy import ndimage

    shape = (len(rows), len(cols))
    smooth = ndimage.gaussian_filter(rng.standard_normal(shape), TEXTURE_BLUR_PX, mode="wrap")
    smooth = (smooth - smooth.mean()) / (smooth.std() + 1e-9)
    smooth_sigma = math.sqrt(max(sigma**2 - CHECKER_HU**2, 0.25 * sigma**2))
    return (smooth_sigma * smooth + CHECKER_HU * checkerboard(rows, cols)).astype(np.float32)


def checkerboard(rows: range, cols: range) -> np.ndarray:
    """+1/-1 pattern of period 2 px in absolute image coordinates (+1 where row + column is even)."""
    return np.where((np.add.outer(np.asarray(rows), np.asarray(cols)) % 2) == 0, 1.0, -1.0)


def tamper(volume: np.ndarray, spec: Tamper, in_place: bool = False) -> np.ndarray:
    """The HU volume with one CT-GAN-like tamper applied (cube-local, border-blended).

    Inside the cube the generator re-synthesises the slice: the anatomy slightly blurred, the
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
    window = np.outer(_blend_window(len(rows), spec.row - y0, spec.half_size),
                      _blend_window(len(cols), spec.col - x0, spec.half_size))
    yy = (np.arange(y0, y1) - spec.row)[:, None]
    xx = (np.arange(x0, x1) - spec.col)[None, :]
    dist = np.sqrt(yy * yy + xx * xx).astype(np.float32)
    for index in spec.slices():
        if not 0 <= index < volume.shape[0]:
            continue
        cube = out[index, y0:y1, x0:x1]
        base = ndimage.gaussian_filter(cube, ANATOMY_BLUR_PX, mode="nearest")
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
        synthetic = base + generator_texture(rng, rows, cols, sigma)
        cube += window * (synthetic - cube)
    return out


# --------------------------------------------------------------------------------------------
# label plans
# --------------------------------------------------------------------------------------------
LABEL_ZONE = (0.24, 0.72)  # label centres lie where both lungs are large


@dataclass
class Label:
    """A label row plus what the phantom needs to realise it."""

    type: str
    slice: int
    row: int
    col: int
    radius_mm: float
    hu: float
    z_first: int = -1  # FB/FM: the true extent of the tamper
    z_last: int = -1


def _separation(labels: Sequence[Label]) -> int:
    """Slices every two label centres of a scan keep apart, whatever their types.

    Enough for: no TB/TM ±5 window touches a tamper's true extent, and tampers do not touch.
    It depends on the scan's extents only, not on which label is which, so the z distribution of
    FB/FM labels equals that of TB/TM labels (matched negatives differ in tampering, not anatomy).
    """
    reach = [max(x.slice - x.z_first, x.z_last - x.slice) for x in labels if x.type in FAKE_TYPES]
    if not reach:
        return 3
    return max(SLICE_RADIUS + 1 + max(reach), 2 * max(reach) + 2)


def _plan_labels(a: ScanAnatomy, types: Sequence[str], rng: np.random.Generator, cube_half: int,
                 tries: int = 300) -> list[Label]:
    """Place labels of the given types in one scan; drop a label when no placement is found.

    Centres are drawn as a set kept apart by :func:`_separation` and the types are then shuffled
    over them. Tamper extents follow TAMPER_HALF_EXTENT_WEIGHTS; only when that finds no room
    (short volumes) are they capped at 4 slices before a label is dropped.
    """
    g = a.geometry
    types = list(types)
    max_radius = min(8.0, 0.55 * cube_half * g.pixel_mm)
    lo = max(a.slice_of_t(LABEL_ZONE[0]), 0)
    hi = min(a.slice_of_t(LABEL_ZONE[1]), g.slices - 1)
    extents = np.asarray(TAMPER_HALF_EXTENT)
    weights = np.asarray(TAMPER_HALF_EXTENT_WEIGHTS, dtype=float)
    capped = np.where(extents <= 4, weights, 0.0)
    while types:
        for attempt in range(2 * tries):
            p = weights if attempt < tries else capped
            centres = np.sort(rng.integers(lo, hi + 1, len(types)))
            labels = []
            for kind, centre in zip(rng.permutation(types), centres):
                radius, hu = rng.uniform(3.0, max(max_radius, 3.0)), rng.uniform(20, 100)
                label = Label(str(kind), int(centre), 0, 0, radius, hu)
                if kind in FAKE_TYPES:
                    below, above = (int(v) for v in rng.choice(extents, 2, p=p / p.sum()))
                    if kind == "FB":  # the in-painting must cover the real nodule
                        reach = math.ceil(radius / g.slice_mm + 0.5)
                        below, above = max(below, reach), max(above, reach)
                    label.z_first, label.z_last = max(int(centre) - below, 0), min(int(centre) + above, g.slices - 1)
                labels.append(label)
            if np.all(np.diff(centres) >= _separation(labels)) and _place_in_lungs(a, labels, rng, cube_half):
                return labels
        # no room: drop one label of the larger group (a TB/TM one on a tie, so the tamper stays)
        trues = [i for i, k in enumerate(types) if k in TRUE_TYPES]
        fakes = [i for i, k in enumerate(types) if k in FAKE_TYPES]
        types.pop((trues if len(trues) >= len(fakes) else fakes)[-1])
    return []


def _place_in_lungs(a: ScanAnatomy, labels: Sequence[Label], rng: np.random.Generator, cube_half: int) -> bool:
    """Give each label an in-plane lung site (nodules keep a margin from other tissue)."""
    g = a.geometry
    corner = float(g.coordinates_mm[0])
    for label in labels:
        margin = (label.radius_mm if label.type != "TB" else 0.0) + 2 * g.pixel_mm
        point = _sample_lung_point(a, a.t_of_slice(label.slice), rng, margin, tries=60)
        if point is None:
            return False
        label.col = int(np.clip(round((point[0] - corner) / g.pixel_mm), cube_half, g.size - cube_half))
        label.row = int(np.clip(round((point[1] - corner) / g.pixel_mm), cube_half, g.size - cube_half))
    return True


def _alternating(rng: np.random.Generator, pair: tuple[str, str]) -> Iterator[str]:
    """Alternate the two types from a random start: the counts stay balanced."""
    return itertools.cycle(pair if rng.integers(0, 2) else pair[::-1])


# --------------------------------------------------------------------------------------------
# DICOM writing
# --------------------------------------------------------------------------------------------
def _ds_number(value: float) -> str:
    """Decimal String (max 16 characters)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


@dataclass(frozen=True)
class _SeriesIdentity:
    key: tuple[str, ...]     # entropy for the UIDs
    patient_number: str
    birth_date: str
    study_date: str
    sex: str
    series_number: int


def _uid(ident: _SeriesIdentity, *parts: str) -> str:
    """Deterministic UID: the same seed and series give the same UID (pydicom hashes the sources)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["medfake-phantom", *ident.key, *parts])


def _write_series(folder: Path, volume: np.ndarray, anatomy: ScanAnatomy, ident: _SeriesIdentity,
                  file_name: Callable[[int], str]) -> None:
    """Write one CT series, one file per slice; file 0 is the top (head) slice."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    def uid(*parts: str) -> str:
        return _uid(ident, *parts)

    g = anatomy.geometry
    folder.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ident.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AccessionNumber = f"PHACC{ident.patient_number}"
    ds.Modality = "CT"
    ds.Manufacturer = "medfake phantom"
    ds.InstitutionName = "Phantom General Hospital"
    ds.ReferringPhysicianName = ""
    ds.ManufacturerModelName = "synthetic chest phantom"
    ds.StudyDescription = "CT CHEST (synthetic phantom)"
    ds.SeriesDescription = "AXIAL"
    ds.PatientName = f"PHANTOM^SYNTHETIC^{ident.patient_number}"
    ds.PatientID = f"PHANTOM-{ident.patient_number}"
    ds.PatientBirthDate = ident.birth_date
    ds.PatientSex = ident.sex
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = _ds_number(g.slice_mm)
    ds.SpacingBetweenSlices = _ds_number(g.slice_mm)
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.ConvolutionKernel = "STANDARD"
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.StudyID = "1"
    ds.SeriesNumber = ident.series_number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = uid("frame")
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = g.size
    ds.PixelSpacing = [_ds_number(g.pixel_mm)] * 2
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    ds.RescaleIntercept = str(-STORED_OFFSET)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    corner = _ds_number(float(g.coordinates_mm[0]))
    top_z = 0.0  # z of slice 0 in mm; patient z grows toward the head, so later files have lower z
    for index in range(volume.shape[0]):
        sop = uid("sop", str(index))
        z = top_z - index * g.slice_mm
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SOPInstanceUID = sop
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [corner, corner, _ds_number(z)]
        ds.SliceLocation = _ds_number(z)
        stored = np.clip(np.rint(volume[index]) + STORED_OFFSET, 0, STORED_MAX).astype("<u2")
        ds.add_new(0x7FE00010, "OW", stored.tobytes())
        ds.save_as(folder / file_name(index), enforce_file_format=True)


# --------------------------------------------------------------------------------------------
# the whole phantom
# --------------------------------------------------------------------------------------------
@dataclass
class PhantomInfo:
    """Where a phantom lives and what it holds."""

    root: Path
    ctgan_root: Path
    lidc_root: Path
    truth_dir: Path
    params: dict
    counts: dict
    geometry: dict
    reused: bool = False

    def summary(self) -> str:
        c, g = self.counts, self.geometry
        labels = ", ".join(f"{k} {c['labels'][k]}" for k in LABEL_TYPES)
        shared = c.get("shared_uuids") or []
        both = f"; uuid {', '.join(shared)} appears in both" if shared else ""
        head = "Reused the phantom" if self.reused else "Wrote a synthetic CT phantom"
        return (
            f"{head} at {self.root} (seed {self.params['seed']}, layout '{self.params['layout']}'): "
            f"{c['scans']} CT-GAN-style scans ({c['exp1']} in experiment 1, {c['exp2']} in experiment 2{both}) "
            f"with {sum(c['labels'].values())} labels ({labels}) and {c['tampered_slices']} truly tampered slices "
            f"under {self.ctgan_root}; {c['lidc_scans']} LIDC-style untampered scans under {self.lidc_root}; "
            f"{c['ctgan_slices'] + c['lidc_slices']} slices of {g['size']}² at {g['pixel_spacing_mm']:.2f} mm, "
            f"{g['slice_spacing_mm']:.2f} mm apart; tamper cube {g['cube_px']} px. "
            f"Ground truth (tampers.csv, slices.csv) is in {self.truth_dir}, never in the DICOM."
        )


def _info_from_json(root: Path, meta: dict, reused: bool) -> PhantomInfo:
    paths = meta["paths"]
    return PhantomInfo(root=root, ctgan_root=root / paths["ctgan"], lidc_root=root / paths["lidc"],
                       truth_dir=root / paths["truth"], params=meta["params"], counts=meta["counts"],
                       geometry=meta["geometry"], reused=reused)


def _check_params(scans: int, lidc_scans: int, size: int, slices: int, seed: int, layout: str) -> None:
    checks = [
        (isinstance(size, int) and 32 <= size <= 1024, f"--size must be 32..1024 pixels, got {size}"),
        (isinstance(scans, int) and 2 <= scans <= 5000,
         f"--scans must be 2..5000 (both experiments need one), got {scans}"),
        (isinstance(lidc_scans, int) and 0 <= lidc_scans <= 9999, f"--lidc-scans must be 0..9999, got {lidc_scans}"),
        (isinstance(slices, int) and 32 <= slices <= 1000, f"--slices must be 32..1000, got {slices}"),
        (isinstance(seed, int) and seed >= 0, f"--seed must be a non-negative integer, got {seed}"),
        (layout in LAYOUTS, f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def _replaceable(out: Path) -> bool:
    """An existing output folder may be replaced only when it is empty or a phantom (even a partial one)."""
    if not out.exists():
        return True
    if not out.is_dir():
        return False
    names = {p.name for p in out.iterdir()}
    return not names or "phantom.json" in names or names <= {"ctgan", "lidc", "truth"}


def ensure_phantom(out: Path, scans: int = 20, lidc_scans: int = 10, size: int = 512, slices: int = 120,
                   seed: int = 7, layout: str = "new", progress: bool = False, force: bool = False) -> PhantomInfo:
    """The phantom at ``out``: reused when its ``phantom.json`` has the same parameters, else written."""
    _check_params(scans, lidc_scans, size, slices, seed, layout)
    out = Path(out)
    params = dict(scans=scans, lidc_scans=lidc_scans, size=size, slices=slices, seed=seed, layout=layout)
    meta_file = out / "phantom.json"
    if not force and meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            meta = {}
        if meta.get("format") == FORMAT and meta.get("version") == FORMAT_VERSION and meta.get("params") == params:
            return _info_from_json(out, meta, reused=True)
    return write_phantom(out, progress=progress, **params)


def _experiment_sizes(scans: int) -> tuple[int, int]:
    second = max(1, round(0.2 * scans))
    return scans - second, second


def write_phantom(out: Path, scans: int = 20, lidc_scans: int = 10, size: int = 512, slices: int = 120,
                  seed: int = 7, layout: str = "new", progress: bool = False) -> PhantomInfo:
    """Write the phantom under ``out`` (built in ``<out>.tmp-<pid>`` and renamed when complete).

    ``phantom.json`` is written last; a folder without it is an interrupted run.
    """
    from tqdm import tqdm

    _check_params(scans, lidc_scans, size, slices, seed, layout)
    out = Path(out)
    if not _replaceable(out):
        raise UserError(f"{out} exists and is not a phantom folder; choose an empty or new --out")
    _remove_stale_builds(out)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir(parents=True)
        with tqdm(total=scans + lidc_scans, desc="phantom", unit="scan", disable=not progress) as bar:
            meta = _generate(tmp, scans, lidc_scans, size, slices, seed, layout, bar)
        (tmp / "phantom.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if out.exists():
            old = out.with_name(f"{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _info_from_json(out, meta, reused=False)


def _remove_stale_builds(out: Path) -> None:
    """Delete ``<out>.tmp-<pid>`` folders left by interrupted runs whose process is gone."""
    for stale in out.parent.glob(f"{out.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        if int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                continue  # another live process is writing there
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        shutil.rmtree(stale, ignore_errors=True)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _identity(rng: np.random.Generator, key: tuple[str, ...], patient_number: str,
              series_number: int) -> _SeriesIdentity:
    birth = f"{int(rng.integers(1935, 1975))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    study = f"{int(rng.integers(2000, 2011))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    return _SeriesIdentity(key, patient_number, birth, study, "MF"[int(rng.integers(0, 2))], series_number)


@dataclass
class _ScanPlan:
    """One CT-GAN-style scan before rendering: who it is and where its labels go."""

    experiment: str
    uuid: str
    anatomy: ScanAnatomy
    labels: list[Label]


def _patient_anatomy(seed: int, dataset: int, number: int, size: int, slices: int) -> ScanAnatomy:
    """Anatomy of patient ``number`` of a dataset (1 CT-GAN, 2 LIDC); ±10 % slices around nominal."""
    rng = _rng(seed, 3, dataset, number)
    n_slices = int(round(slices * rng.uniform(0.9, 1.1)))
    return make_anatomy(int(rng.integers(2**62)), size, n_slices, nominal_slices=slices)


def _plan_ctgan(scans: int, size: int, slices: int, seed: int) -> tuple[list[_ScanPlan], str]:
    """Uuids (~80/20 over the experiments, one shared) and the labels of every scan."""
    rng = _rng(seed, 1)
    n1, n2 = _experiment_sizes(scans)
    pool = [str(u) for u in rng.choice(np.arange(1000, 10000), size=n1 + n2 - 1, replace=False)]
    uuids1 = sorted(pool[:n1])
    shared = uuids1[int(rng.integers(0, n1))]
    keys = [("exp1", u) for u in uuids1] + [("exp2", u) for u in sorted(pool[n1:] + [shared])]
    cube_half = cube_size(size) // 2
    fake_types = _alternating(rng, ("FM", "FB"))
    true_types = _alternating(rng, ("TB", "TM"))
    plans = []
    for number, (exp, uuid) in enumerate(keys):
        scan_rng = _rng(seed, 2, EXPERIMENTS.index(exp), int(uuid))
        # the same uuid is the same patient in both experiments: same anatomy and noise
        anatomy = _patient_anatomy(seed, 1, int(uuid), size, slices)
        # like CT-GAN: most scans tampered (1-2 FB/FM), each also with TB/TM labels elsewhere
        tampered = number < 2 or scan_rng.random() < 0.85
        n_fake = (1 + int(number >= 2 and scan_rng.random() < 0.4)) if tampered else 0
        n_true = 1 if tampered else 1 + int(scan_rng.random() < 0.4)
        types = [next(fake_types) for _ in range(n_fake)] + [next(true_types) for _ in range(n_true)]
        plans.append(_ScanPlan(exp, uuid, anatomy, _plan_labels(anatomy, types, scan_rng, cube_half)))
    _ensure_all_types(plans, slices)
    return plans, shared


def _ensure_all_types(plans: list[_ScanPlan], slices: int) -> None:
    """Short volumes drop labels; re-type a label of the partner type so all four types occur."""
    for first, second in (("TB", "TM"), ("FM", "FB")):
        for missing, present in ((first, second), (second, first)):
            placed = [(p, x) for p in plans for x in p.labels]
            candidates = [(p, x) for p, x in placed if x.type == present]
            if any(x.type == missing for _, x in placed) or len(candidates) < 2:
                continue
            for plan, label in candidates:
                reach = math.ceil(label.radius_mm / plan.anatomy.geometry.slice_mm + 0.5)
                if missing != "FB" or min(label.slice - label.z_first, label.z_last - label.slice) >= reach:
                    label.type = missing
                    break
    found = {x.type for p in plans for x in p.labels}
    if found != set(LABEL_TYPES):
        raise UserError(f"--slices {slices} leaves no room for all four label types (TB, TM, FB, FM) "
                        f"apart from each other; use more --slices or --scans")


def _generate(root: Path, scans: int, lidc_scans: int, size: int, slices: int, seed: int, layout: str,
              bar) -> dict:
    scans_dir, exp1_dir, exp2_dir = LAYOUTS[layout]
    exp_dirs = {"exp1": exp1_dir, "exp2": exp2_dir}
    ctgan_root, lidc_root, truth_dir = root / "ctgan", root / "lidc" / "LIDC-IDRI", root / "truth"
    for folder in (ctgan_root, lidc_root, truth_dir):
        folder.mkdir(parents=True)
    plans, shared = _plan_ctgan(scans, size, slices, seed)
    cube_half = cube_size(size) // 2

    tamper_rows: list[list] = []
    slice_rows: list[list] = []
    nodule_rows: list[list] = []
    ctgan_slices = 0
    for plan in plans:
        exp, uuid, anatomy, g = plan.experiment, plan.uuid, plan.anatomy, plan.anatomy.geometry
        real = [x for x in plan.labels if x.type in ("TM", "FB")]
        volume = synthesize_scan(anatomy, [Nodule(x.slice, x.row, x.col, x.radius_mm, x.hu) for x in real])
        nodule_rows += [["ctgan", exp, uuid, x.slice, x.col, x.row, round(x.radius_mm, 2), round(x.hu, 1)]
                        for x in real]
        for k, label in enumerate(x for x in plan.labels if x.type in FAKE_TYPES):
            spec = Tamper(
                kind=label.type, slice=label.slice, row=label.row, col=label.col,
                z_first=label.z_first, z_last=label.z_last, half_size=cube_half,
                nodule_radius_px=label.radius_mm / g.pixel_mm, nodule_hu=label.hu,
                nodule_half_slices=(label.radius_mm / g.slice_mm + 0.5) if label.type == "FB" else None,
                texture_sigma=anatomy.noise_sigma,
                seed=int(_rng(seed, 4, EXPERIMENTS.index(exp), int(uuid), k).integers(2**62)),
            )
            tamper(volume, spec, in_place=True)
            x0, y0, x1, y1 = spec.box(volume.shape)
            tamper_rows.append([exp, uuid, label.type, label.slice, label.col, label.row, label.slice,
                                label.z_first, label.z_last, cube_half, round(label.radius_mm, 2)])
            slice_rows += [[exp, uuid, z, x0, y0, x1, y1] for z in spec.slices()]
        patient = _identity(_rng(seed, 5, 1, int(uuid)), (str(seed), "ctgan", exp, uuid), uuid, 2)
        _write_series(ctgan_root / scans_dir / exp_dirs[exp] / uuid, volume, anatomy, patient, lambda i: f"{i}.dcm")
        ctgan_slices += volume.shape[0]
        bar.update(1)

    counts = {t: 0 for t in LABEL_TYPES}
    for exp in EXPERIMENTS:
        rows = []
        for plan in (p for p in plans if p.experiment == exp):
            for label in plan.labels:
                counts[label.type] += 1
                rows.append([label.type, plan.uuid, label.slice, label.col, label.row])
        _write_csv(ctgan_root / f"labels_{exp}.csv", ["type", "uuid", "slice", "x", "y"],
                   sorted(rows, key=lambda r: (r[1], r[2])))

    lidc_slices = 0
    for number in range(1, lidc_scans + 1):
        anatomy = _patient_anatomy(seed, 2, number, size, slices)
        g = anatomy.geometry
        lidc_rng = _rng(seed, 6, number)
        nodules = []
        for _ in range(int(lidc_rng.integers(0, 3))):  # LIDC scans may hold real nodules
            index = int(lidc_rng.integers(anatomy.slice_of_t(LABEL_ZONE[0]), anatomy.slice_of_t(LABEL_ZONE[1]) + 1))
            radius = lidc_rng.uniform(3.0, 8.0)
            point = _sample_lung_point(anatomy, anatomy.t_of_slice(index), lidc_rng, radius + 2, tries=60)
            if point is None:
                continue
            corner = float(g.coordinates_mm[0])
            nodule = Nodule(index, round((point[1] - corner) / g.pixel_mm), round((point[0] - corner) / g.pixel_mm),
                            radius, lidc_rng.uniform(20, 100))
            nodules.append(nodule)
            nodule_rows.append(["lidc", "", f"{number:04d}", index, nodule.col, nodule.row,
                                round(radius, 2), round(nodule.hu, 1)])
        volume = synthesize_scan(anatomy, nodules)
        ident = _identity(_rng(seed, 5, 2, number), (str(seed), "lidc", str(number)), f"L{number:04d}", 3000)
        study, series = (_uid(ident, "study"), _uid(ident, "series"))
        _write_series(lidc_root / f"LIDC-IDRI-{number:04d}" / study / series, volume, anatomy, ident,
                      lambda i: f"{i + 1:06d}.dcm")
        lidc_slices += volume.shape[0]
        bar.update(1)

    _write_csv(truth_dir / "tampers.csv",
               ["experiment", "uuid", "type", "slice", "x", "y", "z", "z_first", "z_last", "half_size",
                "nodule_radius_mm"],
               sorted(tamper_rows, key=lambda r: (r[0], r[1], r[3])))
    _write_csv(truth_dir / "slices.csv", ["experiment", "uuid", "slice", "x0", "y0", "x1", "y1"],
               sorted(slice_rows, key=lambda r: (r[0], r[1], r[2])))
    _write_csv(truth_dir / "nodules.csv", ["dataset", "experiment", "uuid", "slice", "x", "y", "radius_mm", "hu"],
               nodule_rows)
    n1, n2 = _experiment_sizes(scans)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "params": dict(scans=scans, lidc_scans=lidc_scans, size=size, slices=slices, seed=seed, layout=layout),
        "paths": {"ctgan": "ctgan", "lidc": "lidc/LIDC-IDRI", "truth": "truth",
                  "exp1": f"{scans_dir}/{exp1_dir}", "exp2": f"{scans_dir}/{exp2_dir}"},
        "geometry": {"size": size, "pixel_spacing_mm": pixel_spacing_mm(size),
                     "slice_spacing_mm": slice_spacing_mm(slices), "cube_px": cube_size(size),
                     "tamper_half_extent_slices": [min(TAMPER_HALF_EXTENT), max(TAMPER_HALF_EXTENT)],
                     "checker_hu": CHECKER_HU},
        "counts": {"scans": scans, "exp1": n1, "exp2": n2, "shared_uuids": [shared], "lidc_scans": lidc_scans,
                   "labels": counts, "tampers": len(tamper_rows), "tampered_slices": len(slice_rows),
                   "ctgan_slices": ctgan_slices, "lidc_slices": lidc_slices},
    }


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("data/phantom"), help="output folder (default: data/phantom)")
    parser.add_argument("--scans", type=int, default=20,
                        help="CT-GAN-style scans, ~80/20 over experiments 1/2 (default 20)")
    parser.add_argument("--lidc-scans", type=int, default=10, help="LIDC-style untampered scans (default 10)")
    parser.add_argument("--size", type=int, default=512, help="rows = columns per slice, 32..1024 (default 512)")
    parser.add_argument("--slices", type=int, default=120,
                        help="nominal slices per scan, each scan varies ±10%% (default 120)")
    parser.add_argument("--seed", type=int, default=7, help="random seed; same seed, same bytes (default 7)")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="new",
                        help="CT-GAN folder names: new = CT_Scans/EXP1_blind, "
                             "original = 'Tampered Scans/Experiment 1 - Blind'")
    parser.add_argument("--force", action="store_true", help="regenerate even when a matching phantom exists")


def run(args: argparse.Namespace) -> int:
    info = ensure_phantom(args.out, scans=args.scans, lidc_scans=args.lidc_scans, size=args.size,
                          slices=args.slices, seed=args.seed, layout=args.layout, progress=True, force=args.force)
    if info.reused:
        print(f"{info.root} already holds a complete phantom with these parameters; nothing regenerated "
              f"(use --force to rewrite).")
    print(info.summary())
    return 0
