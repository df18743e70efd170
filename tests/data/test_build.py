"""medfake.data.build: the by_experiment dataset on a tiny phantom (train/val EXP1, test EXP2)."""

from __future__ import annotations

import pytest

from medfake.core.config import load_config
from medfake.data.build import build
from medfake.data.phantom import write_phantom

TINY = ["data.phantom.scans=8", "data.phantom.lidc_scans=4", "data.phantom.size=64", "data.phantom.slices=32",
        "data.image_size=32", "data.split=by_experiment"]


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom") / "phantom"
    write_phantom(root, scans=8, lidc_scans=4, size=64, slices=32, seed=7)
    return root


@pytest.mark.parametrize("negatives", ["matched", "lidc_random"])
def test_by_experiment_trains_on_exp1_and_tests_on_exp2(phantom_root, tmp_path, monkeypatch, negatives):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("exp1-to-exp2", [*TINY, f"data.phantom.root={phantom_root}", f"data.negatives={negatives}"])
    dataset, reused, _ = build(cfg, progress=False)
    assert not reused
    m = dataset.manifest
    ctgan = m[m["source"] == "ctgan"]
    from_exp2 = ctgan["provenance"].str.startswith("labels_exp2.csv")
    assert from_exp2.any() and (~from_exp2).any()
    assert set(ctgan.loc[from_exp2, "split"]) == {"test"}  # no EXP2 scan in train/val
    assert set(ctgan.loc[~from_exp2, "split"]) == {"train", "val"}  # no EXP1 scan in test
    assert not set(m.loc[m["split"] == "test", "scan_id"]) & set(m.loc[m["split"] != "test", "scan_id"])
    shared = [line for line in (dataset.path / "problems.txt").read_text().splitlines() if "both experiments" in line]
    assert len(shared) == 1  # the phantom's patient scanned in both experiments left training ...
    named = shared[0].split("(scan ", 1)[1].split(")", 1)[0]
    assert named in set(m.loc[m["split"] == "test", "scan_id"])  # ... named by its salted scan id, tested only
    for split in ("train", "val", "test"):
        part = m[m["split"] == split]
        assert set(part["label"]) == {0, 1}, split
    if negatives == "lidc_random":
        assert set(m.loc[m["label"] == 0, "split"]) == {"train", "val", "test"}


@pytest.mark.parametrize("image_size", [64, 32])  # the phantom's 64² slices stored as read, and resized
def test_images_are_the_same_bytes_whether_numpy_or_pydicom_decodes(phantom_root, tmp_path, monkeypatch, image_size):
    """The native read (numpy at the PixelData offset) and the integer HU rounding build byte for
    byte the dataset that pydicom decoding and the float32 formula build."""
    import numpy as np

    from medfake.io import header
    from medfake.io import series as series_module

    def config(cache: str):
        return load_config("paper", [*TINY[:4], f"data.image_size={image_size}", f"data.phantom.root={phantom_root}",
                                     f"data.cache_dir={tmp_path / cache}"])

    pydicom_decodes = []
    real_decode = series_module.decode_stored
    monkeypatch.setattr(series_module, "decode_stored", lambda *args: pydicom_decodes.append(1) or real_decode(*args))
    fast, _, stats = build(config("native"), progress=False)
    assert not pydicom_decodes and stats["decoded"] == len(fast.manifest)
    assert set(stats["phases"]) == {"digest", "headers", "splits", "decode", "resize", "write"}
    assert all(seconds >= 0 for seconds in stats["phases"].values()) and stats["phases"]["headers"] > 0

    monkeypatch.setattr(header, "_native_layout", lambda *args: None)  # every slice through pydicom ...

    def float_formula(self, indices, out):  # ... and rounded as the first version of the build did
        out[...] = np.clip(np.rint(self.read_hu(indices)), -32768, 32767).astype(np.int16)
        return out

    monkeypatch.setattr(series_module.DICOMSeries, "read_hu_int16", float_formula)
    header._shared_fields.cache_clear()
    try:
        slow, _, _ = build(config("pydicom"), progress=False)
    finally:
        header._shared_fields.cache_clear()
    assert len(pydicom_decodes) == len(slow.manifest)
    assert slow.digest == fast.digest
    for name in ("images.npy", "manifest.csv", "problems.txt"):
        assert (slow.path / name).read_bytes() == (fast.path / name).read_bytes(), name


def test_the_build_freezes_earlier_objects_for_the_garbage_collector_and_puts_them_back(phantom_root, tmp_path,
                                                                                       monkeypatch):
    import gc

    from medfake.data import build as build_module

    seen = []
    real_select = build_module.select_slices
    monkeypatch.setattr(build_module, "select_slices", lambda *args: seen.append(gc.get_freeze_count()) or real_select(*args))
    cfg = load_config("paper", [*TINY[:4], "data.image_size=32", f"data.phantom.root={phantom_root}",
                                f"data.cache_dir={tmp_path / 'cache'}"])
    assert gc.get_freeze_count() == 0
    build(cfg, progress=False)
    assert seen[0] > 0 and gc.get_freeze_count() == 0
    gc.freeze()  # a caller that froze objects itself keeps them frozen
    try:
        build(load_config("paper", [*TINY[:4], "data.image_size=32", f"data.phantom.root={phantom_root}",
                                    f"data.cache_dir={tmp_path / 'other'}"]), progress=False)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("fails", ["decode", "write"])
def test_a_failure_while_writing_images_leaves_no_dataset_and_no_temporary_folder(phantom_root, tmp_path, monkeypatch,
                                                                                  fails):
    """The images are decoded on the main thread and written by another: a failure on either side
    stops the build with the error, and nothing half-written remains."""
    from medfake.data import images
    from medfake.data.build import resolve_inputs
    from medfake.data.cache import cache_path, dataset_digest
    from medfake.io.series import DICOMSeries

    cfg = load_config("paper", [*TINY[:4], "data.image_size=64", f"data.phantom.root={phantom_root}",
                                f"data.cache_dir={tmp_path / 'cache'}"])
    calls = {"n": 0}
    target, name = (DICOMSeries, "read_hu_int16") if fails == "decode" else (images.ImageFile, "write")
    real = getattr(target, name)

    def fail_on_the_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(f"{fails} failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, fail_on_the_third)
    with pytest.raises(OSError, match=f"{fails} failed"):
        build(cfg, progress=False)
    final = cache_path(cfg, dataset_digest(cfg, resolve_inputs(cfg, progress=False)))
    assert not final.exists() and not list(final.parent.glob(".*.tmp-*"))


def test_a_cache_cut_short_is_refused_with_one_line_and_rebuilt(phantom_root, tmp_path, capsys):
    """A cache folder copied in part holds a shorter images.npy than its header says: opening it
    says so in one line; the next build rebuilds it to the same bytes."""
    from medfake.core.errors import UserError
    from medfake.data.cache import incomplete, load_dataset

    cfg = load_config("paper", [*TINY[:4], "data.image_size=64", f"data.phantom.root={phantom_root}",
                                f"data.cache_dir={tmp_path / 'cache'}"])
    dataset, reused, _stats = build(cfg, progress=False)
    assert not reused and incomplete(dataset.path) is None
    images = dataset.path / "images.npy"
    whole = images.read_bytes()
    images.write_bytes(whole[: len(whole) - 4096])
    assert incomplete(dataset.path) == f"images.npy is {len(whole) - 4096} bytes, its header says {len(whole)}"
    with pytest.raises(UserError, match=r"is incomplete: images\.npy is \d+ bytes.*run `medfake preprocess` again"):
        load_dataset(dataset.path)
    rebuilt, reused, _stats = build(cfg, progress=False)
    assert not reused and rebuilt.path == dataset.path
    assert "rebuilding dataset" in capsys.readouterr().err
    assert images.read_bytes() == whole
    assert build(cfg, progress=False)[1]  # complete again: reused
