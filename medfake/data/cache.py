"""The cached dataset's name and door: its digest (what makes two builds the same data), its folder,
and opening a complete one. ``medfake.data.build`` writes it; every later step opens it here.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from medfake.core.config import Config
from medfake.core.errors import UserError

if TYPE_CHECKING:
    from medfake.data.build import Inputs


@dataclass
class Dataset:
    """A built dataset: int16 HU slices (memory-mapped) and the manifest."""

    path: Path
    digest: str
    manifest: pd.DataFrame
    info: dict

    @property
    def images(self) -> np.ndarray:
        return np.load(self.path / "images.npy", mmap_mode="r")

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        """(HU images float32 (n,S,S,1), labels (n,), manifest rows) of one split."""
        rows = self.manifest[self.manifest["split"] == name]
        images = np.asarray(self.images[rows["row"].to_numpy()], dtype=np.float32)[..., None]
        return images, rows["label"].to_numpy(dtype=np.int64), rows.reset_index(drop=True)


def _listing_hash(root: Path, hasher) -> None:
    """Relative path and size of every file under root (cheap: no file is opened)."""
    entries = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(folder, name)
            entries.append(f"{os.path.relpath(full, root)}\t{os.path.getsize(full)}")
    for entry in sorted(entries):
        hasher.update(entry.encode())
        hasher.update(b"\n")


def dataset_digest(cfg: Config, inputs: Inputs) -> str:
    """Hash of the data config and the inputs' file listings and label files."""
    data = cfg.to_dict()["data"]
    data.pop("cache_dir")
    data.pop("window")  # applied inside the detector, not to the stored HU slices
    if data["source"] == "real":
        data.pop("phantom")
    data.pop("ctgan_root")
    data.pop("lidc_root")
    if data["split"] != "random":
        # scan-grouped splits no longer depend on the per-checkout salt: caches built before differ
        data["scan_order"] = "first-appearance"
    h = hashlib.sha256(json.dumps(data, sort_keys=True).encode())
    for csv in sorted(inputs.ctgan_root.rglob("labels_exp*.csv")):
        h.update(csv.read_bytes())
    _listing_hash(inputs.ctgan_root, h)
    if inputs.phantom_root is not None and (inputs.phantom_root / "phantom.json").is_file():
        h.update((inputs.phantom_root / "phantom.json").read_bytes())  # same files, other generator: other data
    if inputs.lidc_root is not None:
        _listing_hash(inputs.lidc_root, h)
    return h.hexdigest()[:16]


def cache_path(cfg: Config, digest: str) -> Path:
    return Path(cfg.data.cache_dir) / digest


def incomplete(path: Path) -> str | None:
    """Why the dataset folder is not complete, or None. A build renames the folder into place
    only after images.npy is written and synced, but a folder copied or synced in part (another
    machine's cache, a full disk) can hold a shorter images.npy than its header says, and
    numpy would only fail on it later, deep in a step."""
    if not (path / "dataset.json").is_file():
        return "no dataset.json"
    images = path / "images.npy"
    try:
        with open(images, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _fortran, dtype = read_header(handle)
            expected = handle.tell() + int(np.prod(shape)) * dtype.itemsize
    except (OSError, ValueError) as exc:
        return f"images.npy unreadable ({exc})"
    actual = images.stat().st_size
    if actual != expected:
        return f"images.npy is {actual} bytes, its header says {expected}"
    return None


def load_dataset(cfg_or_dir: Config | Path, digest: str | None = None) -> Dataset:
    """Open a complete cached dataset by config + digest or by its folder."""
    path = cache_path(cfg_or_dir, digest) if isinstance(cfg_or_dir, Config) else Path(cfg_or_dir)
    info_file = path / "dataset.json"
    if not info_file.is_file():
        raise UserError(f"no complete dataset at {path} (run `medfake preprocess` first)")
    problem = incomplete(path)
    if problem:
        raise UserError(f"dataset at {path} is incomplete: {problem} (copied in part?); "
                        "run `medfake preprocess` again to rebuild it")
    info = json.loads(info_file.read_text())
    manifest = pd.read_csv(path / "manifest.csv", dtype={"scan_id": str, "truly_tampered": str}, keep_default_na=False)
    return Dataset(path, info["digest"], manifest, info)
