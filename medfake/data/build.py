"""The study's balanced slice dataset (section 3.2): which slices, which split, and the cached build.

Fakes are the FB/FM-labelled CT-GAN slices ± ``slice_radius`` (the study's rule, which also
takes in untampered neighbours: on the phantom the label noise is measured). Negatives are random
LIDC-IDRI slices (the study) or matched ones: untampered TB/TM-labelled slices ± radius of the same
CT-GAN scans, topped up from LIDC at matching relative z. Only the slices selected are decoded.
The output folder is named by the dataset digest (``medfake.data.cache``) and appears only when complete.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medfake.core.config import Config, data_root
from medfake.core.errors import UserError
from medfake.data import ctgan, lidc
from medfake.data.cache import cache_path, dataset_digest, incomplete, load_dataset
from medfake.data.images import write_images
from medfake.data.phantom import ensure_phantom
from medfake.data.splits import TEST_EXPERIMENT, TRAIN_EXPERIMENT, assign_splits
from medfake.io.privacy import deidentify

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = [
    "row", "scan_id", "source", "slice", "position", "label", "split", "label_type", "provenance",
    "relative_z", "truly_tampered", "x", "y", "radius",
]


@dataclass
class Candidate:
    """One slice that may enter the dataset (before decoding)."""

    source: str          # "ctgan" | "lidc"
    series_key: str      # key into the opened series (internal, never logged)
    group: str           # de-identified scan id; by_scan splits never share one
    position: int        # index in the series' sorted order
    slice: int           # file number (CT-GAN) or position (LIDC): what a user opens
    label: int           # 1 = fake (tampered), 0 = real
    label_type: str      # FB, FM, TB, TM, lidc_random, lidc_matched_z
    provenance: str      # e.g. "labels_exp1.csv row 12 (FM) offset -3"
    relative_z: float    # position / (n_slices - 1)
    truly_tampered: str = ""  # phantom ground truth: "1"/"0"; empty on real data
    experiment: str = ""      # CT-GAN experiment ("EXP1"/"EXP2"); empty for LIDC slices
    # FB/FM: the label's x (column), y (row) and the tamper's half-size (phantom truth) in the stored
    # slice's pixels (image_size², mapped like the resize); empty where unknown (scored by `explain`)
    x: str = ""
    y: str = ""
    radius: str = ""


@dataclass
class Inputs:
    """The data roots a config points at, and phantom truth when there is one."""

    ctgan_root: Path
    lidc_root: Path | None
    truth_dir: Path | None = None
    phantom_root: Path | None = None  # its phantom.json names the generator settings (part of the digest)
    problems: list[str] = field(default_factory=list)


def resolve_inputs(cfg: Config, progress: bool = True) -> Inputs:
    """The CT-GAN and LIDC roots of the config; the phantom is written first when needed."""
    data = cfg.data
    if data.source == "phantom":
        p = data.phantom
        info = ensure_phantom(
            Path(p.root), scans=p.scans, lidc_scans=p.lidc_scans, size=p.size, slices=p.slices,
            seed=p.seed, progress=progress,
        )
        return Inputs(Path(info.ctgan_root), Path(info.lidc_root), Path(info.truth_dir), phantom_root=Path(info.root))
    ctgan = data_root(data.ctgan_root, "data.ctgan_root", "MEDFAKE_CTGAN_ROOT")
    needs_lidc = data.negatives == "lidc_random" or data.lidc_root or os.environ.get("MEDFAKE_LIDC_ROOT")
    lidc = data_root(data.lidc_root, "data.lidc_root", "MEDFAKE_LIDC_ROOT") if needs_lidc else None
    return Inputs(ctgan, lidc)


def _ctgan_candidates(cfg: Config, inputs: Inputs, progress: bool):
    from tqdm import tqdm

    labels = ctgan.read_labels(inputs.ctgan_root)  # every label's uuid names a scan folder (its own check)
    truth = _phantom_truth(inputs.truth_dir)
    half_sizes = _tamper_half_sizes(inputs.truth_dir)
    radius = cfg.data.slice_radius
    series_by_key, fakes, negatives = {}, {}, {}
    keys = sorted({(e, u) for e, u in zip(labels["experiment"], labels["uuid"])})
    for exp, uuid in tqdm(keys, desc="CT-GAN scans (headers)", unit="scan", disable=not progress):
        series = ctgan.open_scan(inputs.ctgan_root, exp, uuid)
        scan_id = deidentify("ctgan", uuid)
        key = f"ctgan/{exp}/{uuid}"
        series_by_key[key] = series
        inputs.problems += [f"scan {scan_id}: {_scrub(p, exp, uuid)}" for p in _scan_problems(series)]
        rows = labels[(labels["experiment"] == exp) & (labels["uuid"] == uuid)]
        ctgan.validate_label_slices(rows, series)
        n = len(series)
        for row in rows.itertuples():
            tampered = row.type in ("FB", "FM")
            target = fakes if tampered else negatives
            for offset in range(-radius, radius + 1):
                file_number = int(row.slice) + offset
                try:
                    position = series.index_of_file_number(file_number)
                except KeyError:  # beyond the scan's ends (or a missing file): clipped, never shifted
                    continue
                ident = (key, position)
                if ident in target and abs(offset) >= abs(int(target[ident].provenance.rsplit(" ", 1)[-1])):
                    continue  # keep the provenance of the nearest label
                target[ident] = Candidate(
                    source="ctgan", series_key=key, group=scan_id, position=position, slice=file_number,
                    label=int(tampered), label_type=row.type,
                    provenance=f"{Path(row.csv_file).name} row {row.csv_row} ({row.type}) offset {offset:+d}",
                    relative_z=position / max(n - 1, 1),
                    truly_tampered=_truth_flag(truth, exp, uuid, file_number), experiment=exp,
                    **(_tamper_position(row, series, cfg.data.image_size, half_sizes.get((exp, uuid, int(row.slice))))
                       if tampered else {}),
                )
    # A slice inside a tampered window is never a negative.
    negatives = {k: v for k, v in negatives.items() if k not in fakes}
    return series_by_key, list(fakes.values()), list(negatives.values())


def _scan_problems(series) -> list[str]:
    """What reading a CT-GAN scan noticed, each once (a mixed file order is already among the
    series' own problems; check_file_order adds the cases where label slices can't be trusted)."""
    warning = ctgan.check_file_order(series)
    lines = [warning] if warning and warning not in series.problems else []
    return lines + list(series.problems) + [f"skipped {name}: {reason}" for name, reason in series.skipped]


def _scrub(text: str, *names: str) -> str:
    """Problem texts name files; keep only file names, never the folders above them."""
    out = str(text)
    for name in names:
        out = out.replace(str(name), "…")
    return out


def _phantom_truth(truth_dir: Path | None) -> set | None:
    if truth_dir is None or not (truth_dir / "slices.csv").is_file():
        return None
    table = pd.read_csv(truth_dir / "slices.csv", dtype={"uuid": str, "experiment": str})
    return {
        (ctgan.normalize_experiment(e), str(u), int(s)) for e, u, s in zip(table["experiment"], table["uuid"], table["slice"])
    }


def _tamper_half_sizes(truth_dir: Path | None) -> dict:
    """(experiment, uuid, centre slice) → the tamper cube's in-plane half-size in pixels (phantom truth)."""
    if truth_dir is None or not (truth_dir / "tampers.csv").is_file():
        return {}
    table = pd.read_csv(truth_dir / "tampers.csv", dtype={"uuid": str, "experiment": str})
    return {(ctgan.normalize_experiment(e), str(u), int(s)): float(h)
            for e, u, s, h in zip(table["experiment"], table["uuid"], table["slice"], table["half_size"])}


def _tamper_position(row, series, size: int, half_size: float | None) -> dict[str, str]:
    """A label's x, y (and half-size) in the stored size² slice: pixel centres scale like the resize."""
    def to_size(value: float, extent: int) -> str:
        return f"{(value + 0.5) * size / extent - 0.5:.2f}"

    radius = f"{half_size * size / series.columns:.2f}" if half_size is not None else ""
    return {"x": to_size(row.x, series.columns), "y": to_size(row.y, series.rows), "radius": radius}


def _truth_flag(truth: set | None, exp: str, uuid: str, file_number: int) -> str:
    if truth is None:
        return ""
    return "1" if (str(exp), str(uuid), int(file_number)) in truth else "0"


def _lidc_series(inputs: Inputs, progress: bool):
    from tqdm import tqdm

    refs = lidc.find_series(inputs.lidc_root)
    opened = {}
    for ref in tqdm(refs, desc="LIDC series (headers)", unit="series", disable=not progress):
        try:
            series = lidc.open_series(ref)
        except UserError as exc:
            inputs.problems.append(f"LIDC series {deidentify('lidc', ref.series_uid)} skipped: {exc}")
            continue
        opened[f"lidc/{ref.series_uid}"] = series
    if not opened:
        raise UserError(f"{inputs.lidc_root}: no readable CT series found")
    return opened


def _lidc_random(series: dict, count: int, rng: np.random.Generator, used: set) -> list[Candidate]:
    """Slices drawn uniformly over all LIDC slices (the study's negatives)."""
    keys = sorted(series)
    lengths = np.array([len(series[k]) for k in keys])
    total = int(lengths.sum())
    if total - len(used) < count:
        raise UserError(f"LIDC root has {total} slices, fewer than the {count} negatives needed")
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    chosen: list[Candidate] = []
    for flat in rng.permutation(total):
        k = int(np.searchsorted(offsets, flat, side="right") - 1)
        position = int(flat - offsets[k])
        if (keys[k], position) in used:
            continue
        used.add((keys[k], position))
        chosen.append(_lidc_candidate(keys[k], series[keys[k]], position, "lidc_random", "random LIDC slice"))
        if len(chosen) == count:
            break
    return chosen


def _lidc_matched_z(series: dict, targets: list[float], rng: np.random.Generator, used: set) -> list[Candidate]:
    """For each target relative z, a random LIDC series' slice nearest to it."""
    keys = sorted(series)
    chosen = []
    for z in targets:
        for k in rng.permutation(len(keys)):
            key = keys[int(k)]
            n = len(series[key])
            position = int(round(z * (n - 1)))
            if (key, position) not in used:
                used.add((key, position))
                chosen.append(_lidc_candidate(key, series[key], position, "lidc_matched_z", f"LIDC top-up at z={z:.2f}"))
                break
        else:
            raise UserError("not enough LIDC slices to top up the matched negatives")
    return chosen


def _lidc_candidate(key: str, series, position: int, label_type: str, provenance: str) -> Candidate:
    n = len(series)
    return Candidate(
        source="lidc", series_key=key, group=deidentify("lidc", key), position=position, slice=position,
        label=0, label_type=label_type, provenance=provenance, relative_z=position / max(n - 1, 1),
    )


def _without_shared_patients(fakes: list[Candidate], negatives: list[Candidate], problems: list[str]):
    """Split by_experiment: a patient scanned in experiment 2 (tested) leaves experiment 1 (trained on),
    so train and test share no patient (the CT-GAN uuid is the patient; its scan id is the same)."""
    tested = {c.group for c in fakes + negatives if c.experiment == TEST_EXPERIMENT}
    shared = sorted({c.group for c in fakes + negatives if c.experiment == TRAIN_EXPERIMENT and c.group in tested})
    if shared:
        problems.append(f"split by_experiment: {len(shared)} patient(s) appear in both experiments "
                        f"(scan {', '.join(shared)}): their experiment-1 slices are left out")

    def kept(candidates: list[Candidate]) -> list[Candidate]:
        return [c for c in candidates if not (c.experiment == TRAIN_EXPERIMENT and c.group in tested)]

    return kept(fakes), kept(negatives)


def select_slices(cfg: Config, inputs: Inputs, progress: bool = True):
    """All slices of the dataset (fakes then negatives) and the series they come from."""
    rng = np.random.default_rng(cfg.data.seed)
    series, fakes, negatives = _ctgan_candidates(cfg, inputs, progress)
    if cfg.data.split == "by_experiment":
        fakes, negatives = _without_shared_patients(fakes, negatives, inputs.problems)
    if not fakes:
        raise UserError(f"{inputs.ctgan_root}: the labels name no FB/FM (tampered) slice")
    fakes.sort(key=lambda c: (c.series_key, c.position))
    negatives.sort(key=lambda c: (c.series_key, c.position))
    need = len(fakes)
    if cfg.data.negatives == "lidc_random":
        lidc = _lidc_series(inputs, progress)
        series.update(lidc)
        chosen = _lidc_random(lidc, need, rng, set())
    else:
        if len(negatives) >= need:
            idx = np.sort(rng.choice(len(negatives), size=need, replace=False))
            chosen = [negatives[i] for i in idx]
        else:
            chosen = list(negatives)
            missing = need - len(chosen)
            if inputs.lidc_root is None:
                raise UserError(
                    f"matched negatives: {len(chosen)} untampered labelled slices for {need} fakes; "
                    "set data.lidc_root (or MEDFAKE_LIDC_ROOT) to top up from LIDC"
                )
            lidc = _lidc_series(inputs, progress)
            series.update(lidc)
            targets = [fakes[int(i)].relative_z for i in rng.choice(len(fakes), size=missing, replace=True)]
            chosen += _lidc_matched_z(lidc, targets, rng, set())
    return series, fakes + chosen


def build(cfg: Config, progress: bool = True, inputs: Inputs | None = None, digest: str | None = None):
    """Build (or reuse) the dataset of a config. Returns (dataset, reused, stats).

    ``stats["phases"]`` holds the seconds of each phase (digest, headers and selection, splits,
    decode, resize, write), measured in the same run.
    """
    with _earlier_objects_frozen():
        return _build(cfg, progress, inputs, digest)


@contextlib.contextmanager
def _earlier_objects_frozen():
    """Python's cyclic garbage collector skips the objects that existed before the build (the
    imported libraries' hundreds of thousands): the header pass allocates enough to trigger full
    collections, which walked them all (~12 % of a build on a 25-scan phantom). They are put back
    afterwards; nothing is skipped when a caller has already frozen objects itself."""
    frozen_here = gc.get_freeze_count() == 0
    if frozen_here:
        gc.freeze()
    try:
        yield
    finally:
        if frozen_here:
            gc.unfreeze()


def _build(cfg: Config, progress: bool, inputs: Inputs | None, digest: str | None):
    started = time.perf_counter()
    phases = dict.fromkeys(("digest", "headers", "splits", "decode", "resize", "write"), 0.0)
    clock = [started]

    def lap(phase: str) -> None:
        now = time.perf_counter()
        phases[phase] += now - clock[0]
        clock[0] = now

    inputs = inputs or resolve_inputs(cfg, progress)
    clock[0] = time.perf_counter()
    digest = digest or dataset_digest(cfg, inputs)
    final = cache_path(cfg, digest)
    if (final / "dataset.json").is_file():
        problem = incomplete(final)
        if problem is None:
            return load_dataset(final), True, {}
        print(f"rebuilding dataset {digest}: the cached one is incomplete ({problem})", file=sys.stderr)
        shutil.rmtree(final)
    lap("digest")
    series, candidates = select_slices(cfg, inputs, progress)
    lap("headers")
    splits = assign_splits(
        np.array([c.label for c in candidates]), np.array([c.group for c in candidates]),
        cfg.data.split, cfg.data.split_fractions, cfg.data.seed,
        experiments=np.array([c.experiment for c in candidates]),
    )
    lap("splits")
    size = cfg.data.image_size
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{digest}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        by_series: dict[str, list[int]] = {}
        for i, c in enumerate(candidates):
            by_series.setdefault(c.series_key, []).append(i)
        jobs = [(series[key], rows, [candidates[i].position for i in rows]) for key, rows in sorted(by_series.items())]
        decoded = write_images(tmp / "images.npy", len(candidates), size, jobs, lap, progress)
        manifest = pd.DataFrame(
            [
                {
                    "row": i, "scan_id": c.group, "source": c.source, "slice": c.slice, "position": c.position,
                    "label": c.label, "split": splits[i], "label_type": c.label_type, "provenance": c.provenance,
                    "relative_z": round(c.relative_z, 4), "truly_tampered": c.truly_tampered,
                    "x": c.x, "y": c.y, "radius": c.radius,
                }
                for i, c in enumerate(candidates)
            ],
            columns=MANIFEST_COLUMNS,
        )
        manifest.to_csv(tmp / "manifest.csv", index=False)
        (tmp / "problems.txt").write_text("\n".join(inputs.problems) + ("\n" if inputs.problems else ""))
        seconds = time.perf_counter() - started
        info = {
            "digest": digest,
            "image_size": size,
            "source": cfg.data.source,
            "negatives": cfg.data.negatives,
            "split": cfg.data.split,
            "counts": counts(manifest),
            "problems": len(inputs.problems),
            "seconds": round(seconds, 2),
            "slices_decoded": decoded,
        }
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2))
        os.replace(tmp, final)
        lap("write")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_dataset(final), False, {"seconds": seconds, "decoded": decoded, "inputs": inputs, "phases": phases}


def counts(manifest: pd.DataFrame) -> dict[str, int]:
    """Slices per split × class, e.g. ``train_fake``."""
    out = {}
    for split in SPLITS:
        for label, name in ((1, "fake"), (0, "real")):
            out[f"{split}_{name}"] = int(((manifest["split"] == split) & (manifest["label"] == label)).sum())
    return out


def label_noise(manifest: pd.DataFrame) -> dict[str, float]:
    """Phantom only: how many slices the ±radius rule labels fake are truly tampered."""
    fakes = manifest[(manifest["label"] == 1) & (manifest["truly_tampered"].isin(["0", "1"]))]
    if fakes.empty:
        return {}
    true = int((fakes["truly_tampered"] == "1").sum())
    negatives = manifest[(manifest["label"] == 0) & (manifest["truly_tampered"] == "1")]
    return {
        "label_fake_slices": float(len(fakes)),
        "label_fake_truly_tampered": float(true),
        "label_fake_untampered": float(len(fakes) - true),
        "label_noise_rate": (len(fakes) - true) / len(fakes),
        "label_real_truly_tampered": float(len(negatives)),
    }
