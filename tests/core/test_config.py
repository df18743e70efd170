from pathlib import Path

import pytest

from medfake.core.config import Config, load_config, resolve_config_path
from medfake.core.errors import UserError


def test_base_file_and_dataclass_defaults_agree():
    # base.yaml must name every key with the dataclass defaults (the study's values).
    assert load_config("base") == Config()


def test_quickstart_overrides_only_what_it_names():
    cfg = load_config("quickstart")
    assert cfg.data.negatives == "matched" and cfg.data.split == "by_scan"
    assert cfg.train.beta_1 == 0.9  # untouched key keeps base value


def test_paper_config_is_the_study_protocol():
    cfg = load_config("paper")
    assert (cfg.data.negatives, cfg.data.split, cfg.data.image_size) == ("lidc_random", "random", 512)
    t = cfg.train
    assert (t.batch_size, t.phase1_epochs, t.phase1_lr, t.phase2_epochs, t.phase2_lr) == (8, 80, 1e-4, 20, 1e-5)
    assert cfg.data.slice_radius == 5 and cfg.data.split_fractions == (0.70, 0.15, 0.15)


def test_set_overrides_are_typed():
    cfg = load_config("quickstart", ["train.phase1_lr=3e-4", "data.image_size=96", "train.feature_cache=false"])
    assert cfg.train.phase1_lr == pytest.approx(3e-4)
    assert cfg.data.image_size == 96 and cfg.train.feature_cache is False


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.nope=1", "unknown config key 'train.nope'"),
        ("data.image_size=big", "expected an integer"),
        ("data.split=sideways", "is not one of"),
        ("data=3", "is a section"),
        ("novalue", "expected key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(UserError, match=message):
        load_config("quickstart", [override])


def test_unknown_and_duplicate_keys_in_files(tmp_path: Path):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  phase3_epochs: 4\n")
    with pytest.raises(UserError, match="unknown config key 'train.phase3_epochs'"):
        load_config(unknown)
    dup = tmp_path / "dup.yaml"
    dup.write_text("seed: 1\nseed: 2\n")
    with pytest.raises(UserError, match="line 2: duplicate key 'seed'"):
        load_config(dup)


def test_missing_config_lists_known_ones():
    with pytest.raises(UserError, match="quickstart"):
        resolve_config_path("does-not-exist")


def test_digest_and_flat_view():
    a, b = load_config("quickstart"), load_config("quickstart", ["seed=7"])
    assert a.digest() == load_config("quickstart").digest() != b.digest()
    flat = a.flat()
    assert flat["data.window.center"] == a.data.window.center and flat["model.backbone"] == "xception"
    assert a.replace(**{"train.batch_size": 4}).train.batch_size == 4


def test_experiment_files_hold_no_absolute_paths():
    for path in Path(resolve_config_path("base")).parent.glob("*.yaml"):
        for line in path.read_text().splitlines():
            value = line.split("#", 1)[0].split(":", 1)[-1].strip()
            assert not value.startswith("/"), f"{path.name}: absolute path {value}"


def test_set_strings_split_into_overrides():
    from medfake.core.config import split_overrides

    assert split_overrides(["a.b=1 c=2", "model.head_units=[16, 8]", ""]) == ["a.b=1", "c=2", "model.head_units=[16, 8]"]
