"""The whole phantom: plan the scans, render, tamper, write DICOM and the ground truth, atomically.

``phantom.json`` is written last and records the parameters, so a matching phantom is reused.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from medfake.core.errors import UserError
from medfake.data.phantom.anatomy import (
    Nodule, cube_size, pixel_spacing_mm, sample_lung_point, slice_spacing_mm, spawn_rng,
)
from medfake.data.phantom.labels import (
    EXPERIMENTS, FAKE_TYPES, LABEL_TYPES, LABEL_ZONE, TAMPER_HALF_EXTENT, experiment_sizes, patient_anatomy,
    plan_ctgan,
)
from medfake.data.phantom.render import synthesize_scan
from medfake.data.phantom.tamper import CHECKER_HU, EXPERIMENT_STYLES, Tamper, tamper
from medfake.data.phantom.writer import make_identity, series_uid, write_series


FORMAT = "medfake-phantom"
FORMAT_VERSION = 2  # 2: experiment 2's tampers use their own generator setting (a simulated shift)
LAYOUTS = {
    # layout → (scans folder, experiment 1 folder, experiment 2 folder)
    "new": ("CT_Scans", "EXP1_blind", "EXP2_open"),
    "original": ("Tampered Scans", "Experiment 1 - Blind", "Experiment 2 - Open"),
}


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


def _generate(root: Path, scans: int, lidc_scans: int, size: int, slices: int, seed: int, layout: str,
              bar) -> dict:
    scans_dir, exp1_dir, exp2_dir = LAYOUTS[layout]
    exp_dirs = {"exp1": exp1_dir, "exp2": exp2_dir}
    ctgan_root, lidc_root, truth_dir = root / "ctgan", root / "lidc" / "LIDC-IDRI", root / "truth"
    for folder in (ctgan_root, lidc_root, truth_dir):
        folder.mkdir(parents=True)
    plans, shared = plan_ctgan(scans, size, slices, seed)
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
                texture_sigma=anatomy.noise_sigma, style=EXPERIMENT_STYLES[exp],
                seed=int(spawn_rng(seed, 4, EXPERIMENTS.index(exp), int(uuid), k).integers(2**62)),
            )
            tamper(volume, spec, in_place=True)
            x0, y0, x1, y1 = spec.box(volume.shape)
            tamper_rows.append([exp, uuid, label.type, label.slice, label.col, label.row, label.slice,
                                label.z_first, label.z_last, cube_half, round(label.radius_mm, 2)])
            slice_rows += [[exp, uuid, z, x0, y0, x1, y1] for z in spec.slices()]
        patient = make_identity(spawn_rng(seed, 5, 1, int(uuid)), (str(seed), "ctgan", exp, uuid), uuid, 2)
        write_series(ctgan_root / scans_dir / exp_dirs[exp] / uuid, volume, anatomy, patient, lambda i: f"{i}.dcm")
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
        anatomy = patient_anatomy(seed, 2, number, size, slices)
        g = anatomy.geometry
        lidc_rng = spawn_rng(seed, 6, number)
        nodules = []
        for _ in range(int(lidc_rng.integers(0, 3))):  # LIDC scans may hold real nodules
            index = int(lidc_rng.integers(anatomy.slice_of_t(LABEL_ZONE[0]), anatomy.slice_of_t(LABEL_ZONE[1]) + 1))
            radius = lidc_rng.uniform(3.0, 8.0)
            point = sample_lung_point(anatomy, anatomy.t_of_slice(index), lidc_rng, radius + 2, tries=60)
            if point is None:
                continue
            corner = float(g.coordinates_mm[0])
            nodule = Nodule(index, round((point[1] - corner) / g.pixel_mm), round((point[0] - corner) / g.pixel_mm),
                            radius, lidc_rng.uniform(20, 100))
            nodules.append(nodule)
            nodule_rows.append(["lidc", "", f"{number:04d}", index, nodule.col, nodule.row,
                                round(radius, 2), round(nodule.hu, 1)])
        volume = synthesize_scan(anatomy, nodules)
        ident = make_identity(spawn_rng(seed, 5, 2, number), (str(seed), "lidc", str(number)), f"L{number:04d}", 3000)
        study, series = (series_uid(ident, "study"), series_uid(ident, "series"))
        write_series(lidc_root / f"LIDC-IDRI-{number:04d}" / study / series, volume, anatomy, ident,
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
    n1, n2 = experiment_sizes(scans)
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
        "generator": {exp: dataclasses.asdict(style) for exp, style in EXPERIMENT_STYLES.items()},
        "counts": {"scans": scans, "exp1": n1, "exp2": n2, "shared_uuids": [shared], "lidc_scans": lidc_scans,
                   "labels": counts, "tampers": len(tamper_rows), "tampered_slices": len(slice_rows),
                   "ctgan_slices": ctgan_slices, "lidc_slices": lidc_slices},
    }


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
