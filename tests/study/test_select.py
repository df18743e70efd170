"""The select step on fake runs logged into a throwaway store: H, ranking, reuse, aggregation, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medfake.study import launcher as launcher_module
from medfake.study import ranking, statistics
from medfake.study import select as sel
from medfake.study.launcher import Launcher
from medfake.models import published as study
from medfake.cli import main
from medfake.training.metrics import STUDY_VECTOR, h_score

from study_fakes import (  # noqa: F401
    EXPERIMENT, FakeLauncher, FakeSubmitted, base_config, fake_predictions, fake_run, full_metrics, log_study_screen,
    run_cli, study_metrics,
)


def test_h_of_the_studys_table1_gives_its_table_a1_and_top_six():
    for model, row in study.TABLE1.items():
        assert h_score(row["accuracy"], row["f1"], row["specificity"]) == pytest.approx(study.TABLE_A1[model], abs=6e-5)
    ranks = study.study_ranks()
    assert sorted(ranks, key=ranks.get)[:6] == sorted(study.TOP_SIX, key=ranks.get)
    assert set(study.TABLE2) == set(study.TOP_SIX) and len(study.TABLE3) == 13


def test_rank_on_test_reproduces_the_studys_choice(project, capsys, artifact):
    log_study_screen()
    fake_run("baseline", metrics=study_metrics("ResNet50V2", "test") | study_metrics("ResNet50V2", "val")
             | {"test_accuracy": 0.999, "val_accuracy": 0.999})  # the best H, yet never repeated
    code, out, err = run_cli(["select", "--experiment", EXPERIMENT, "--rank-on", "test", "--repeats", "0", "--json"], capsys)
    assert code == 0, err
    ranking = json.loads(out)
    assert [entry["rank"] for entry in ranking] == list(range(1, 15))
    assert ranking[0]["model"] == "baseline" and not ranking[0]["kept"]
    assert {entry["model"] for entry in ranking if entry["kept"]} == set(study.TOP_SIX)
    assert ranking[1]["model"] == "ResNet50V2"
    for entry in ranking[1:]:
        assert entry["h"] == pytest.approx(study.TABLE_A1[entry["model"]], abs=6e-5)
        assert set(entry) >= {"model", "run_id", "h", "accuracy", "f1", "specificity", "rank"}
    # The select run logged Table A1 as CSV and markdown, the correlation of all 14 and of the top 6.
    import mlflow

    run = mlflow.search_runs(experiment_names=[EXPERIMENT], filter_string="tags.`medfake.stage` = 'select'",
                             output_format="list")[0]
    assert run.info.status == "FINISHED" and run.data.params["rank_on"] == "test"
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "select")}
    assert {"select/ranking.csv", "select/ranking.md", "select/table2.csv", "select/correlation_all.png",
            "select/correlation_top.png", "select/significance.csv"} <= files
    ranking_md = artifact(run.info.run_id, "select/ranking.md").read_text()
    assert "| 2 | **ResNet50V2** |" in ranking_md and "| 1 | baseline |" in ranking_md


def test_rank_on_val_uses_validation_metrics_and_newest_run(project, capsys):
    cfg = base_config()
    # Val metrics reverse the test order; an older screen run of VGG19 is ignored.
    fake_run("VGG19", metrics=study_metrics("VGG19") | {"val_accuracy": 0.1, "val_f1": 0.1, "val_specificity": 0.1}, cfg=cfg)
    fake_run("VGG19", metrics=study_metrics("VGG19") | {"val_accuracy": 0.99, "val_f1": 0.99, "val_specificity": 0.99}, cfg=cfg)
    fake_run("ResNet50V2", metrics=study_metrics("ResNet50V2") | {"val_accuracy": 0.5, "val_f1": 0.5, "val_specificity": 0.5})
    code, out, err = run_cli(["select", "--experiment", EXPERIMENT, "--top-k", "1", "--repeats", "0", "--json"], capsys)
    assert code == 0, err
    ranking = json.loads(out)
    assert [e["model"] for e in ranking] == ["VGG19", "ResNet50V2"]
    assert ranking[0]["h"] == pytest.approx(0.99) and ranking[0]["kept"] and not ranking[1]["kept"]


def test_ties_break_by_model_name():
    class Run:
        def __init__(self, name):
            self.info = type("Info", (), {"run_id": name, "run_name": name})()
            self.data = type("Data", (), {"metrics": {"val_accuracy": 0.9, "val_f1": 0.9, "val_specificity": 0.9},
                                          "params": {"seed": "1"}, "tags": {"medfake.model": name}})()

    selection = ranking.rank_models([Run("b"), Run("a"), Run("c")], "val", 2)
    assert [e.model for e in selection.ranked] == ["a", "b", "c"]
    assert [e.kept for e in selection.ranked] == [True, True, False]


# -- bad input -------------------------------------------------------------------------------------
def test_missing_experiment_and_no_screen_runs_are_one_line_errors(project, capsys):
    code, _, err = run_cli(["select", "--experiment", "nope", "--repeats", "0"], capsys)
    assert code == 2 and "no MLflow experiment named 'nope'" in err and len(err.strip().splitlines()) == 1
    fake_run("VGG19", stage="preprocess")
    code, _, err = run_cli(["select", "--experiment", EXPERIMENT, "--repeats", "0"], capsys)
    assert code == 2 and "has no FINISHED screen runs" in err
    assert err.strip().splitlines()[-1].startswith("medfake select: error:")


def test_mixed_data_digests_are_refused_unless_one_is_picked(project, capsys):
    fake_run("VGG19", data_digest="a" * 16)
    fake_run("Xception", data_digest="b" * 16)
    fake_run("DenseNet121", data_digest="b" * 16)
    code, _, err = run_cli(["select", "--experiment", EXPERIMENT, "--repeats", "0"], capsys)
    assert code == 2 and "2 data digests are mixed" in err and "--data-digest" in err
    assert f"{'a' * 16} (1 runs)" in err
    code, out, err = run_cli(["select", "--experiment", EXPERIMENT, "--repeats", "0", "--data-digest", "b" * 16,
                              "--top-k", "2", "--json"], capsys)
    assert code == 0, err
    assert sorted(e["model"] for e in json.loads(out)) == ["DenseNet121", "Xception"]
    code, _, err = run_cli(["select", "--experiment", EXPERIMENT, "--repeats", "0", "--data-digest", "c" * 16], capsys)
    assert code == 2 and "no FINISHED screen runs with data digest" in err


def test_run_missing_a_metric_is_skipped_and_fewer_than_top_k_kept(project, capsys):
    incomplete = full_metrics("VGG19")
    del incomplete["val_f1"]
    fake_run("VGG19", metrics=incomplete)
    fake_run("Xception")
    fake_run("DenseNet121", status="FAILED")  # not FINISHED: never read
    code, out, err = run_cli(["select", "--experiment", EXPERIMENT, "--repeats", "0", "--json"], capsys)
    assert code == 0, err
    assert "skipping screen run VGG19-s42" in err and "missing metric val_f1" in err
    assert "fewer than --top-k 6: keeping all 1" in err
    assert [e["model"] for e in json.loads(out)] == ["Xception"]
    incomplete_only = {"test_accuracy": 0.9}
    fake_run("Xception", metrics=incomplete_only)  # now the newest Xception run lacks val metrics too
    code, _, err = run_cli(["select", "--experiment", EXPERIMENT, "--repeats", "0"], capsys)
    assert code == 2 and "no screen run in 'select-test' has val_accuracy" in err


def test_bad_options_are_one_line_errors(project, capsys):
    fake_run("Xception")
    for argv, message in ((["--top-k", "0"], "--top-k must be at least 1"), (["--parallel", "0"], "--parallel must be"),
                          (["--repeats", "-1"], "--repeats must be 0 or more"),
                          (["--backend-config", "{not json"], "--backend-config")):
        code, _, err = run_cli(["select", "--experiment", EXPERIMENT, *argv], capsys)
        assert code == 2 and message in err, (argv, err)


# -- repeats: launch, reuse, failure -----------------------------------------------------------------
def test_repeats_are_launched_once_and_reused_after_an_interruption(project, capsys, monkeypatch):
    import mlflow

    screens = log_study_screen(("ResNet50V2", "DenseNet169", "VGG19"))
    interrupted = FakeLauncher(interrupt_after=3)
    monkeypatch.setattr(launcher_module, "launch_train", interrupted)
    argv = ["select", "--experiment", EXPERIMENT, "--top-k", "2", "--repeats", "2", "--rank-on", "test"]
    code, _, err = run_cli(argv, capsys)
    assert code == 130 and len(interrupted.jobs) == 3
    killed = mlflow.search_runs(experiment_names=[EXPERIMENT], filter_string="tags.`medfake.stage` = 'select'",
                                output_format="list")
    assert [run.info.status for run in killed] == ["KILLED"]
    first = interrupted.jobs[0]
    assert first.stage == "repeat" and first.model == "ResNet50V2" and first.seed == 43 and first.data_digest == "d" * 16
    assert first.parent == killed[0].info.run_id and Path(first.config).is_file()
    assert [(job.model, job.seed) for job in interrupted.jobs] == [("ResNet50V2", 43), ("ResNet50V2", 44), ("DenseNet169", 43)]

    resumed = FakeLauncher()
    monkeypatch.setattr(launcher_module, "launch_train", resumed)
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert [(job.model, job.seed) for job in resumed.jobs] == [("DenseNet169", 44)]
    assert "reusing 3 of 4 finished run(s)" in err
    assert "Table 2" in out and "± is the sample standard deviation" in out

    again = FakeLauncher()
    monkeypatch.setattr(launcher_module, "launch_train", again)
    assert main(argv) == 0 and again.jobs == []
    # Repeats carry the config of their screen run (only the seed differs) and the select run as parent.
    repeat = mlflow.search_runs(experiment_names=[EXPERIMENT], filter_string="tags.`medfake.stage` = 'repeat'",
                                output_format="list")
    assert len(repeat) == 4
    screen_params = mlflow.get_run(screens["ResNet50V2"]).data.params
    for run in repeat:
        if run.data.params["model"] == "ResNet50V2":
            differing = {k for k, v in run.data.params.items() if screen_params.get(k) != v}
            assert differing == {"seed"}


def test_failed_repeats_exit_1_and_are_retried(project, capsys, monkeypatch):
    log_study_screen(("ResNet50V2", "DenseNet169"))
    failing = FakeLauncher(fail_models={"DenseNet169"})
    monkeypatch.setattr(launcher_module, "launch_train", failing)
    argv = ["select", "--experiment", EXPERIMENT, "--top-k", "2", "--repeats", "1", "--parallel", "2"]
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and "1 repeat run(s) did not finish: DenseNet169-s43" in err
    retry = FakeLauncher()
    monkeypatch.setattr(launcher_module, "launch_train", retry)
    code, _, err = run_cli(argv, capsys)
    assert code == 0 and [(j.model, j.seed) for j in retry.jobs] == [("DenseNet169", 43)]


# -- aggregation, correlation, significance -----------------------------------------------------------
def test_aggregate_is_mean_and_sample_std():
    runs = {"A": [{"test_auc": 0.9, "test_f1": 0.8, "val_auc": 0.1}, {"test_auc": 0.7, "test_f1": 0.6},
                  {"test_auc": 0.8, "test_f1": float("nan")}],
            "B": [{"test_auc": 0.5}]}
    table = statistics.aggregate(runs).set_index(["model", "metric"])
    assert table.loc[("A", "test_auc"), "mean"] == pytest.approx(0.8)
    assert table.loc[("A", "test_auc"), "std"] == pytest.approx(np.std([0.9, 0.7, 0.8], ddof=1))
    assert table.loc[("A", "test_auc"), "n"] == 3
    assert table.loc[("A", "test_f1"), "n"] == 2 and table.loc[("A", "test_f1"), "mean"] == pytest.approx(0.7)
    assert np.isnan(table.loc[("B", "test_auc"), "std"]) and ("A", "val_auc") not in table.index


def test_select_run_tables_match_the_runs(project, monkeypatch, artifact):
    import mlflow

    log_study_screen(("ResNet50V2", "DenseNet169", "Xception"))
    rng = np.random.default_rng(0)
    drawn = {}

    def metrics(job):
        values = {f"test_{name}": float(rng.uniform(0.5, 1.0)) for name in ("accuracy", "precision", "recall",
                                                                              "specificity", "f1", "auc", "h")}
        drawn[(job.model, job.seed)] = values
        return values

    results = sel.select(Launcher(EXPERIMENT, launch=FakeLauncher(metrics=metrics), say=lambda m: None),
                         sel.SelectOptions("test", 2, 2))
    table = results.table2.set_index(["model", "metric"])
    for model in ("ResNet50V2", "DenseNet169"):
        values = [study.TABLE1[model]["auc"]] + [drawn[(model, seed)]["test_auc"] for seed in (43, 44)]
        assert table.loc[(model, "test_auc"), "mean"] == pytest.approx(np.mean(values))
        assert table.loc[(model, "test_auc"), "std"] == pytest.approx(np.std(values, ddof=1))
        assert table.loc[(model, "test_auc"), "n"] == 3
    # Figure 5 correlates all three screened models' Table 1 vectors; Figure 6 the top two's means.
    vectors = np.array([[study.TABLE1[m][k] for k in STUDY_VECTOR] for m in ("DenseNet169", "ResNet50V2", "Xception")])
    np.testing.assert_allclose(results.correlation_all.loc[["DenseNet169", "ResNet50V2", "Xception"],
                                                           ["DenseNet169", "ResNet50V2", "Xception"]].to_numpy(),
                               np.corrcoef(vectors), atol=1e-12)
    assert list(results.correlation_top.index) == ["ResNet50V2", "DenseNet169"]
    assert len(results.significance) == 1
    run = mlflow.search_runs(experiment_names=[EXPERIMENT], filter_string="tags.`medfake.stage` = 'select'",
                             output_format="list")[0]
    csv = artifact(run.info.run_id, "select/table2.csv")
    logged = pd.read_csv(csv).set_index(["model", "metric"])
    assert logged.loc[("DenseNet169", "test_f1"), "mean"] == pytest.approx(table.loc[("DenseNet169", "test_f1"), "mean"])


def test_significance_pairs_are_mcnemar_and_delong_with_holm():
    same = fake_predictions(1)
    better = same.copy()
    better["score"] = better["label"] * 0.8 + 0.1
    better["predicted"] = better["label"]
    worse = same.copy()
    worse["predicted"] = 1 - worse["label"]
    worse["score"] = 1 - better["score"]
    frame = statistics.significance({"A": same, "B": same.copy(), "C": better, "D": worse}).set_index(["model_a", "model_b"])
    assert len(frame) == 6
    assert frame.loc[("A", "B"), "mcnemar_p"] == 1.0 and frame.loc[("A", "B"), "delong_p"] == pytest.approx(1.0)
    assert frame.loc[("C", "D"), "mcnemar_p"] < 1e-6 and frame.loc[("C", "D"), "auc_a"] == 1.0
    assert frame.loc[("C", "D"), "only_a_right"] == 40
    p = np.array([0.01, 0.04, 0.03, 0.5])
    np.testing.assert_allclose(statistics.holm(p), [0.04, 0.09, 0.09, 0.5])
    shifted = same.iloc[1:]  # a different test set is not compared
    assert len(statistics.significance({"A": same, "E": shifted})) == 0
