"""The study's selection protocol pinned (DESIGN §2, study section 5): rank by H (harmonic mean of
accuracy, F1, specificity), keep the top six, two more runs of each with seeds screen seed + 1
and + 2 (README "select"), mean ± sample std over the three runs (Table 2)."""

from __future__ import annotations

import argparse
import inspect
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from medfake.core.config import load_config
from medfake.core.contract import BASELINE
from medfake.core.errors import UserError
from medfake.models import published as study
from medfake.study import ranking, statistics
from medfake.study import select as sel

# The functions under test, named once (the one place to change if they move).
rank_models = ranking.rank_models
repeat_jobs = sel.repeat_jobs
aggregate = statistics.aggregate


def _run(model: str, accuracy: float, f1: float, specificity: float, seed: int = 42, split: str = "test"):
    """A stand-in for an MLflow screen run: what the ranking reads."""
    metrics = {f"{split}_accuracy": accuracy, f"{split}_f1": f1, f"{split}_specificity": specificity}
    return SimpleNamespace(
        info=SimpleNamespace(run_id=f"run-{model}", run_name=f"{model}-s{seed}"),
        data=SimpleNamespace(metrics=metrics, params={"model": model, "seed": str(seed)},
                             tags={"medfake.model": model, "medfake.config_digest": "c" * 16}),
    )


def _study_screen(split: str = "test"):
    return [_run(m, row["accuracy"], row["f1"], row["specificity"], split=split) for m, row in study.TABLE1.items()]


def test_defaults_keep_six_and_repeat_each_twice():
    parameters = inspect.signature(sel.SelectOptions).parameters
    assert parameters["top_k"].default == 6 and parameters["repeats"].default == 2
    parser = argparse.ArgumentParser()
    sel.add_selection_arguments(parser)
    args = parser.parse_args([])
    assert (args.top_k, args.repeats, args.rank_on) == (6, 2, "val")


def test_ranking_the_studys_table_1_by_h_keeps_its_top_six():
    selection = rank_models(_study_screen(), "test", 6)
    assert [e.model for e in selection.kept] == sorted(study.TOP_SIX, key=lambda m: -study.TABLE_A1[m])
    assert len(selection.kept) == 6 and len(selection.ranked) == 13
    for entry in selection.ranked:
        assert entry.h == pytest.approx(study.TABLE_A1[entry.model], abs=6e-5)
        assert entry.h == pytest.approx(3 / (1 / entry.accuracy + 1 / entry.f1 + 1 / entry.specificity), abs=1e-12)
    assert [e.rank for e in selection.ranked] == list(range(1, 14))
    assert all(a.h >= b.h for a, b in zip(selection.ranked, selection.ranked[1:]))
    assert not selection.warnings


def test_ranking_is_by_h_not_by_accuracy_or_f1_alone():
    # A: best accuracy and F1, poor specificity; B: balanced. H keeps B first.
    runs = [_run("A", 0.95, 0.95, 0.50), _run("B", 0.90, 0.90, 0.90), _run("C", 0.80, 0.80, 0.80)]
    selection = rank_models(runs, "test", 2)
    assert [e.model for e in selection.ranked] == ["B", "C", "A"]
    assert [e.model for e in selection.kept] == ["B", "C"]


def test_ties_break_by_name_and_the_baseline_is_ranked_but_never_kept():
    runs = [_run("Zeta", 0.9, 0.9, 0.9), _run("Alpha", 0.9, 0.9, 0.9), _run(BASELINE, 0.99, 0.99, 0.99),
            _run("Mid", 0.8, 0.8, 0.8)]
    selection = rank_models(runs, "test", 2)
    assert [e.model for e in selection.ranked] == [BASELINE, "Alpha", "Zeta", "Mid"]
    assert [e.model for e in selection.kept] == ["Alpha", "Zeta"]
    assert [e.kept for e in selection.ranked] == [False, True, True, False]
    few = rank_models(runs, "test", 6)
    assert len(few.kept) == 3 and any("fewer than --top-k 6" in w for w in few.warnings)


def test_ranking_reads_the_chosen_split_and_skips_runs_without_it():
    runs = [_run("A", 0.9, 0.9, 0.9, split="val"), _run("B", 0.8, 0.8, 0.8, split="val"),
            _run("C", 0.99, 0.99, 0.99, split="test")]
    selection = rank_models(runs, "val", 6)
    assert [e.model for e in selection.ranked] == ["A", "B"]
    assert any("run-C" in w and "val_accuracy" in w for w in selection.warnings)


def test_two_repeats_per_kept_model_with_seeds_screen_seed_plus_one_and_two(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("paper")
    assert cfg.seed == 42
    # The module's global, not repeat_jobs.__globals__: under mutmut the function is a wrapper from
    # another module, and the mutation run must see the same stand-in.
    monkeypatch.setattr(sys.modules[repeat_jobs.__module__], "screen_config", lambda run_id: cfg)
    selection = rank_models(_study_screen(), "test", 6)
    jobs, warnings = repeat_jobs(selection, 2, parent="select-run")
    assert not [w for w in warnings if "digest" not in w]
    assert len(jobs) == 12
    by_model: dict[str, list[int]] = {}
    for job in jobs:
        by_model.setdefault(job.model, []).append(job.seed)
        assert job.stage == "repeat" and job.parent == "select-run"
        assert job.run_name == f"{job.model}-s{job.seed}"
        assert job.config_digest == cfg.replace(seed=job.seed).digest()
    assert by_model == {model: [43, 44] for model in study.TOP_SIX}
    assert repeat_jobs(selection, 0)[0] == []


def test_table_2_is_mean_and_sample_std_over_the_three_runs():
    frame = aggregate({"M": [{"test_accuracy": 0.90}, {"test_accuracy": 0.92}, {"test_accuracy": 0.97}],
                       "One": [{"test_accuracy": 0.5, "val_accuracy": 0.1}]})
    row = frame[(frame["model"] == "M") & (frame["metric"] == "test_accuracy")].iloc[0]
    assert row["n"] == 3 and row["mean"] == pytest.approx(0.93)
    assert row["std"] == pytest.approx(math.sqrt(((0.03) ** 2 + (0.01) ** 2 + (0.04) ** 2) / 2))  # ddof = 1
    one = frame[frame["model"] == "One"]
    assert list(one["metric"]) == ["test_accuracy"] and math.isnan(one.iloc[0]["std"])


def test_table_2_counts_only_the_runs_that_have_a_finite_value():
    runs = [{"test_accuracy": math.nan, "test_f1": 0.80, "test_h": 0.5},
            {"test_accuracy": math.nan, "test_f1": 0.90},
            {"test_f1": 0.85, "test_h": 0.7}]
    frame = aggregate({"M": runs}).set_index("metric")
    assert list(frame.index) == ["test_f1", "test_h"]  # no finite accuracy: no row, the next metrics still come
    assert frame.loc["test_f1", "n"] == 3 and frame.loc["test_f1", "mean"] == pytest.approx(0.85)
    assert frame.loc["test_h", "n"] == 2 and frame.loc["test_h", "mean"] == pytest.approx(0.6)
    assert frame.loc["test_h", "std"] == pytest.approx(0.2 / math.sqrt(2))  # two runs have a sample std
    empty = aggregate({"M": [{"val_accuracy": 0.9}]})
    assert empty.empty and list(empty.columns) == ["model", "metric", "n", "mean", "std"]


def test_each_repeat_runs_its_screen_runs_own_config_on_the_same_data(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("paper")
    asked: list[str] = []

    def screen_config(run_id):
        asked.append(run_id)
        return cfg

    monkeypatch.setattr(sys.modules[repeat_jobs.__module__], "screen_config", screen_config)
    selection = rank_models(_study_screen(), "test", 6, data_digest="d" * 16)
    jobs, warnings = repeat_jobs(selection, 1)
    assert asked == [entry.run_id for entry in selection.kept]
    for job in jobs:
        assert job.data_digest == "d" * 16 and job.parent == ""
        assert job.parameters()["set"] == ""  # the saved config as it is, no overrides
        assert Path(job.config).read_text() == cfg.to_yaml()
    # The screen runs' tag ("c" * 16) is not this config's digest: one warning per kept model, naming both.
    assert len(warnings) == 6 and all(cfg.digest() in w and "c" * 16 in w for w in warnings)
    for entry in selection.ranked:
        entry.config_digest = cfg.digest()
    assert repeat_jobs(selection, 1)[1] == []
    for entry in selection.ranked:
        entry.config_digest = ""  # an untagged screen run: nothing to compare with
    assert repeat_jobs(selection, 1)[1] == []
    monkeypatch.setattr(sys.modules[repeat_jobs.__module__], "screen_config", lambda run_id: None)
    with pytest.raises(UserError, match=r"screen run .* has no config.yaml artifact to repeat it with"):
        repeat_jobs(selection, 1)


def test_the_ranking_keeps_each_runs_identity_and_says_what_it_skipped():
    no_metrics = _run("NoMetrics", 0.9, 0.9, 0.9, split="test")
    bad_seed = _run("BadSeed", 0.9, 0.9, 0.9, split="val")
    bad_seed.data.params["seed"] = "forty-two"
    no_seed = _run("NoSeed", 0.8, 0.8, 0.8, split="val")
    del no_seed.data.params["seed"]
    no_seed.info.run_name = None
    del no_seed.data.tags["medfake.config_digest"]
    tagged = _run("Tagged", 0.9, 0.9, 0.9, seed=7, split="val")
    # Skipped runs come first: the ones after them are still ranked.
    selection = rank_models([no_metrics, bad_seed, no_seed, tagged], "val", 1, experiment="exp", data_digest="d1")
    assert (selection.experiment, selection.data_digest, selection.rank_on, selection.top_k) == ("exp", "d1", "val", 1)
    assert selection.warnings == [
        "skipping screen run NoMetrics-s42 (run-NoMetrics): missing metric val_accuracy, val_f1, val_specificity",
        "skipping screen run BadSeed-s42 (run-BadSeed): param seed is not an integer",
    ]
    first, second = selection.ranked
    assert (first.model, first.run_id, first.run_name, first.seed, first.config_digest, first.kept) == (
        "Tagged", "run-Tagged", "Tagged-s7", 7, "c" * 16, True)
    assert first.metrics == tagged.data.metrics
    # No run name, no seed param, no config digest tag: the model's name, seed 0, no digest.
    assert (second.model, second.run_id, second.run_name, second.seed, second.config_digest, second.kept) == (
        "NoSeed", "run-NoSeed", "NoSeed", 0, "", False)
    assert [e.model for e in rank_models([tagged], "val", 1).kept] == ["Tagged"]  # top-k 1 is allowed
    plain = rank_models([tagged], "val", 1)
    assert (plain.experiment, plain.data_digest) == ("", "")


def test_ranking_options_and_an_empty_ranking_are_one_line_errors():
    runs = [_run("A", 0.9, 0.9, 0.9)]
    with pytest.raises(UserError, match="^--rank-on must be one of val, test, got 'train'$"):
        rank_models(runs, "train", 6)
    with pytest.raises(UserError, match="^--top-k must be at least 1, got 0$"):
        rank_models(runs, "test", 0)
    with pytest.raises(UserError, match="^no screen run in 'exp' has val_accuracy, val_f1 and val_specificity$"):
        rank_models(runs, "val", 6, experiment="exp")
