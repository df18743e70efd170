"""The report step: tables and figures from a store of fake runs; the same store renders the same files."""

from __future__ import annotations

import numpy as np
import pytest
from study_fakes import EXPERIMENT, FakeLauncher, fake_predictions, fake_run, full_metrics  # noqa: F401

from medfake.study import report
from medfake.study import select as sel
from medfake.study.launcher import Launcher
from medfake.models import published as study
from medfake.cli import main

MODELS = ("DenseNet121", "ResNet50V2", "MobileNetV3Large")


def small_png(path, seed: int):
    from medfake.core.plots import embedding_map

    rng = np.random.default_rng(seed)
    return embedding_map(rng.normal(size=(20, 2)), np.arange(20) % 2, None, path, "embedding")


@pytest.fixture
def study_store(project, tmp_path):  # noqa: F811 - the fixture imported from test_select
    """Three screened backbones + the baseline, and a select run with one repeat of the top two."""
    import mlflow

    for index, model in enumerate(MODELS):
        run_id = fake_run(model, predictions=fake_predictions(index))
        mlflow.MlflowClient().log_artifact(run_id, str(small_png(tmp_path / "e" / "embedding_tsne.png", index)), "plots")
    baseline = {k: v * 0.7 for k, v in full_metrics("VGG19").items() if k.startswith(("test_", "val_"))}
    baseline |= {"test_tp": 5, "test_fp": 5, "test_tn": 5, "test_fn": 5, "params_m": 0.00003, "latency_ms_mean": 0.2,
                 "latency_ms_std": 0.01}
    fake_run("baseline", metrics=baseline, predictions=fake_predictions(9, flip=0.4))
    sel.select(Launcher(EXPERIMENT, launch=FakeLauncher(), say=lambda m: None), sel.SelectOptions("test", 2, 1))
    return tmp_path


def files_of(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_report_renders_every_table_and_figure(study_store, capsys):
    code = main(["report", "--experiment", EXPERIMENT, "--out", "out"])
    assert code == 0, capsys.readouterr().err
    out = study_store / "out"
    text = (out / "README.md").read_text()
    assert "**Synthetic data.**" in text and "ranking on the **test** split" in text
    for heading in ("## Table 1", "## Table A1", "## Table 2", "## Table 3", "## Pairwise significance", "## Figures"):
        assert heading in text
    # Ours beside the study's: Table 1 rows, Table A1's H and rank, Table 2's three-run rows, Table 3.
    assert "| DenseNet121 | ours | 0.9678 [0.958, 0.978] |" in text
    assert "|  | study | 0.9678 | 0.9412 | 0.9944 |" in text
    assert "| **ResNet50V2** |" in text and "0.9780 (1)" in text
    assert "| baseline |" in text and "0.9705 ± 0.0047" in text
    assert "7.7 |" in text and "334.9 ± 72.4" in text
    assert "sample standard deviation (ddof = 1)" in text
    for figure in ("figure3_latency.png", "figure4_embedding_tsne.png", "figure5_correlation_all.png",
                   "figure6_correlation_top.png", "figure7_confusion_matrices.png", "roc_all_models.png"):
        assert (out / "figures" / figure).is_file() and f"(figures/{figure})" in text
    assert not (out / "figures" / "figure4_embedding_pca.png").exists()  # no run logged a PCA map
    tables = {path.name for path in (out / "tables").iterdir()}
    assert tables == {"table1.csv", "table_a1.csv", "table2.csv", "table3.csv", "correlation_all.csv",
                      "correlation_top.csv", "significance.csv"}


def test_same_store_same_files_and_the_store_is_untouched(study_store):
    import mlflow

    def store_state():
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        return sorted((run.info.run_id, run.info.status, len(run.data.tags)) for run in runs)

    before = store_state()
    report.render(EXPERIMENT, study_store / "a")
    report.render(EXPERIMENT, study_store / "b")
    (study_store / "b" / "figures" / "stale.png").write_bytes(b"old")  # an older report's leftover goes away
    report.render(EXPERIMENT, study_store / "b")
    first, second = files_of(study_store / "a"), files_of(study_store / "b")
    assert first.keys() == second.keys() and len(first) > 10
    for name in first:
        assert first[name] == second[name], name
    assert store_state() == before


def test_report_without_a_select_run_uses_defaults(project, capsys):  # noqa: F811
    for model in MODELS:
        fake_run(model, predictions=fake_predictions(1))
    readme = report.render(EXPERIMENT, project / "plain")
    text = readme.read_text()
    assert "no select run found: defaults" in text and "ranking on the **val** split" in text
    assert "no finished repeat with seed 43" in text  # noted, not hidden
    code = main(["report", "--experiment", "missing-experiment", "--out", "x"])
    err = capsys.readouterr().err
    assert code == 2 and "no MLflow experiment named 'missing-experiment'" in err
    assert not (project / "x").exists()


def test_study_numbers_cover_all_thirteen_backbones():
    from medfake.models.registry import list_backbones

    names = {backbone.name for backbone in list_backbones()}
    assert set(study.TABLE1) == names == set(study.TABLE3) == set(study.TABLE_A1)
    for backbone in list_backbones():  # the registry and this table transcribe the same Table 3
        assert study.TABLE3[backbone.name]["params_m"] == backbone.paper_params_m
        assert (study.TABLE3[backbone.name]["latency_ms_mean"], study.TABLE3[backbone.name]["latency_ms_std"]) == \
            tuple(backbone.paper_latency_ms)


def test_table1_truth_and_breakdown_columns_only_where_logged():
    import pandas as pd

    from medfake.study.report import table1_truth_markdown

    phantom = pd.DataFrame([{"model": "A", "auc": 0.9, "auc_ci_low": 0.85, "auc_ci_high": 0.95, "auc_true": 0.95,
                             "auc_true_ci_low": 0.9, "auc_true_ci_high": 0.99, "label_noise": 0.15,
                             "recall_fm": 0.8, "recall_fm_ci_low": 0.7, "recall_fm_ci_high": 0.9, "fpr_tm": float("nan")}])
    text = table1_truth_markdown(phantom)
    assert "AUC (true)" in text and "0.950 [0.900, 0.990]" in text and "Recall FM" in text
    assert "FPR TM" not in text  # no run logged it
    assert table1_truth_markdown(pd.DataFrame([{"model": "A", "auc": 0.9}])) is None  # older runs: no table


def test_setup_names_the_phase2_rate_of_a_backbone_without_normalisation():
    params = {"train.phase1_lr": "0.001", "train.phase2_lr": "0.001"}
    assert "| Learning rates | 0.001 / 0.001 | 1e-4 / 1e-5 |" in report.setup_markdown(params, [])
    own = report.setup_markdown(params | {"train.phase2_lr_unnormalised": "3e-05"}, [])
    assert "| Learning rates | 0.001 / 0.001 (phase 2 without normalisation layers: 3e-05) |" in own
    assert "without normalisation" not in report.setup_markdown(params | {"train.phase2_lr_unnormalised": "None"}, [])
    assert "without normalisation" not in report.setup_markdown(params | {"train.phase2_lr_unnormalised": "?"}, [])  # an older run


def test_setup_names_the_input_channels():
    params = {"data.image_size": "96"}
    assert "| Input | 96², grey ×3 | 512², grey ×3 |" in report.setup_markdown(params, [])
    assert "| Input | 96², grey ×3 |" in report.setup_markdown(params | {"model.noise_residual": "False"}, [])
    residual = report.setup_markdown(params | {"model.noise_residual": "True"}, [])
    assert "| Input | 96², grey + noise residual ×2 | 512², grey ×3 |" in residual
