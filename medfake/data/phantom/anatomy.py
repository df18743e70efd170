"""Per-patient anatomy of the phantom: body shape, organs, lungs, vessel trees, and the scan geometry.

Everything random about one patient is drawn from its seed (:func:`make_anatomy`); the slice
geometry mirrors a chest CT: ~0.7 mm pixels at 512² (PixelSpacing (0028,0030)) and a volume from
the neck to the upper abdomen, slice 0 at the top.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np


# Geometry: 0.7 mm pixels at 512² (scaled with the matrix), the volume spans ~300 mm head to feet.
PIXEL_MM_AT_512 = 0.7
COVERAGE_MM = 300.0
CUBE_PX_AT_512 = 32          # CT-GAN's cube edge in voxels
CUBE_PX_MIN = 12             # smallest cube edge at any matrix
CUBE_PX_SMALL = 16           # cube edge from 128² up to 256²

# Hounsfield units
AIR, FAT, SOFT, BLOOD, LIVER, LUNG, BONE, MARROW = -1000.0, -100.0, 40.0, 45.0, 58.0, -850.0, 700.0, 280.0


def spawn_rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


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
class Shape:
    """An ellipse painted with a HU value; ``lung`` sets (1), clears (0) or keeps (None) the lung map."""

    cx: float
    cy: float
    ax: float
    ay: float
    hu: float
    angle: float = 0.0
    lung: float | None = None
    edge_mm: float = 0.0


def slice_shapes(a: ScanAnatomy, t: float, stage: str) -> list[Shape]:
    """The ellipses of one axial slice at relative height t (0 neck … 1 upper abdomen), in paint order.

    ``stage`` is "soft" (body, lungs, organs: before vessels and nodules) or "bone" (after them).
    """
    w, d = a.width, a.depth
    chest = _smoothstep(0.03, 0.20, t)
    shapes: list[Shape] = []
    if stage == "soft":
        bx = (62 + 103 * chest) * w * (1 + 0.05 * _smoothstep(0.75, 1.0, t))
        by = (58 + 54 * chest) * d
        bcy = -5 + 10 * chest
        shoulder = 1 - _smoothstep(0.08, 0.22, t)
        body = [(0.0, bcy, bx, by)]
        if shoulder > 0.02:
            body += [(s * 118 * w, 5.0, 58 * shoulder * w, 55 * shoulder * d) for s in (-1, 1)]
        for cx, cy, ex, ey in body:
            shapes.append(Shape(cx, cy, ex, ey, FAT))
        for cx, cy, ex, ey in body:
            shapes.append(Shape(cx, cy, max(ex - a.fat_mm, 1.0), max(ey - a.fat_mm, 1.0), SOFT))
        cavity = _smoothstep(0.07, 0.20, t) * (1 - _smoothstep(0.86, 0.95, t))
        if cavity > 0.02:
            shapes.append(Shape(0.0, bcy + 3, (bx - 28) * cavity, (by - 24) * cavity, 25.0))
        # lungs: grow from the apex, end at the diaphragm
        size = math.sqrt(_smoothstep(0.10, 0.32, t)) * (1 - _smoothstep(0.76, 0.84, t)) * a.lung
        if size > 0.03:
            for s in (-1, 1):
                shapes.append(Shape(s * 74 * w, 6.0, 57 * w * size, 80 * d * size, a.lung_hu, lung=1.0))
        # diaphragm domes: liver on the patient's right (image left), stomach/spleen on the left
        liver = math.sqrt(_smoothstep(0.58, 0.80, t)) * (1 - 0.35 * _smoothstep(0.9, 1.1, t))
        if liver > 0.02:
            shapes.append(Shape(-62 * w, 12.0, 92 * w * liver, 78 * d * liver, LIVER, lung=0.0, edge_mm=2.0))
        left = math.sqrt(_smoothstep(0.64, 0.84, t))
        if left > 0.02:
            shapes.append(Shape(68 * w, 12.0, 78 * w * left, 70 * d * left, 35.0, lung=0.0, edge_mm=2.0))
            gas = _smoothstep(0.70, 0.78, t) * (1 - _smoothstep(0.9, 1.0, t))
            if gas > 0.05:
                shapes.append(Shape(52 * w, -32.0, 24 * gas * w, 18 * gas * d, AIR, lung=0.0))
            spleen = _smoothstep(0.76, 0.84, t)
            if spleen > 0.05:
                shapes.append(Shape(98 * w, 48.0, 28 * spleen * w, 40 * spleen * d, 48.0, angle=0.5, lung=0.0))
        kidney = _smoothstep(0.86, 0.93, t)
        if kidney > 0.05:
            for s in (-1, 1):
                shapes.append(Shape(s * 66 * w, 48.0, 26 * kidney, 38 * kidney, 32.0, angle=s * 0.35, lung=0.0))
        # heart with epicardial fat
        heart = _smoothstep(0.40, 0.50, t) * (1 - _smoothstep(0.68, 0.77, t)) * a.heart
        if heart > 0.03:
            shapes.append(Shape(24 * w, -14.0, 66 * heart * w, 54 * heart * d, -90.0, angle=-0.45, lung=0.0))
            shapes.append(Shape(24 * w, -14.0, 60 * heart * w, 48 * heart * d, 42.0, angle=-0.45, lung=0.0))
        # aorta: ascending, arch, descending
        if 0.27 < t < 0.46:
            shapes.append(Shape(8.0, -20.0, 14.0, 14.0, BLOOD, lung=0.0))
        if 0.23 < t < 0.28:
            shapes.append(Shape(14.0, 12.0, 13.0, 40.0, BLOOD, angle=-0.3, lung=0.0))
        if 0.25 < t:
            x = 22 * w - 16 * _smoothstep(0.75, 0.95, t)
            shapes.append(Shape(x, 42 * d, 12.0, 12.0, BLOOD, lung=0.0))
        # trachea and main bronchi: air with a soft wall, not lung
        if t < 0.37:
            ty = -25 + 15 * _smoothstep(0.0, 0.35, t)
            shapes.append(Shape(0.0, ty, 11.0, 10.0, 20.0, lung=0.0))
            shapes.append(Shape(0.0, ty, 8.5, 7.5, AIR, lung=0.0))
        elif t < 0.45:
            spread = 12 + 260 * (t - 0.37)
            for s in (-1, 1):
                shapes.append(Shape(s * spread, -10.0, 7.5, 7.0, 20.0, lung=0.0))
                shapes.append(Shape(s * spread, -10.0, 5.5, 5.0, AIR, lung=0.0))
        return shapes

    # bone
    vy = (8 + 54 * chest) * d
    k = 0.7 + 0.3 * chest  # vertebrae are smaller in the neck
    shapes += [
        Shape(0.0, vy, 17.0 * k, 15.0 * k, BONE, lung=0.0),
        Shape(0.0, vy, 13.0 * k, 11.5 * k, MARROW),
        Shape(0.0, vy + 31 * k, 19.0 * k, 6.0 * k, 600.0, lung=0.0),
        Shape(0.0, vy + 42 * k, 4.5 * k, 10.0 * k, 650.0, lung=0.0),
        Shape(0.0, vy + 24 * k, 8.0 * k, 7.0 * k, 30.0),
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
                shapes.append(Shape(cx, cy, 9.0, 4.5, BONE, angle=tangent, lung=0.0))
        if 0.2 < t < 0.62:
            shapes.append(Shape(0.0, -(py + 3), 14.0, 6.5, 600.0, lung=0.0))
    if 0.10 < t < 0.42:  # scapulae: thin plates in the posterior chest wall, outside the ribs
        bx = (62 + 103 * chest) * w
        by = (58 + 54 * chest) * d
        theta = math.radians(52)
        for s in (-1, 1):
            cx, cy = s * (bx - 14) * math.sin(theta), (by - 12) * math.cos(theta)
            tangent = math.atan2(-(by - 12) * math.sin(theta), s * (bx - 14) * math.cos(theta))
            shapes.append(Shape(cx, cy, 34.0, 3.5, 650.0, angle=tangent, lung=0.0))
    if 0.05 < t < 0.16:
        for s in (-1, 1):
            shapes.append(Shape(s * 62 * w, -44.0, 52.0, 6.0, 650.0, angle=s * 0.18, lung=0.0))
    shoulder = 1 - _smoothstep(0.06, 0.16, t)
    if shoulder > 0.1:
        for s in (-1, 1):
            shapes.append(Shape(s * 136 * w, 8.0, 24 * shoulder, 24 * shoulder, BONE))
            shapes.append(Shape(s * 136 * w, 8.0, 18 * shoulder, 18 * shoulder, MARROW))
    return shapes


def _inside(shape: Shape, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray | bool:
    c, s = math.cos(shape.angle), math.sin(shape.angle)
    u = (x - shape.cx) * c + (y - shape.cy) * s
    v = -(x - shape.cx) * s + (y - shape.cy) * c
    return (u / shape.ax) ** 2 + (v / shape.ay) ** 2 <= 1.0


def _lung_points(a: ScanAnatomy, t: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which points (mm, arrays) of the slice at relative height t lie in lung parenchyma."""
    lung = np.zeros(np.shape(x), dtype=bool)
    for stage in ("soft", "bone"):
        for shape in slice_shapes(a, t, stage):
            if shape.lung is not None:
                lung = np.where(_inside(shape, x, y), shape.lung > 0.5, lung)
    return lung


def sample_lung_point(a: ScanAnatomy, t: float, rng: np.random.Generator, margin_mm: float,
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
