"""The report's generalisation table: in-distribution vs cross-experiment AUC and the drop, from fake runs."""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest
from study_fakes import EXPERIMENT, fake_run, full_metrics

from medfake.cli import main
from medfake.core.contract import (
    STAGE_EVALUATE,
    TAG_SOURCE_DATA_DIGEST,
    TAG_SOURCE_RUN,
    TAG_TARGET_DATA_DIGEST,
)
from medfake.study import generalisation

SOURCE_DIGEST = "a" * 16
TARGET_DIGEST = "b" * 16
TARGET_EXPERIMENT = "exp1-to-exp2-test"


def fake_evaluate(source_run: str, auc: float, target_digest: str = TARGET_DIGEST, model: str = "DenseNet121") -> str:
    """An evaluate run as ``medfake evaluate`` logs it, in the target config's experiment."""
    import mlflow

    metrics = {"test_auc": auc, "test_auc_ci_low": auc - 0.05, "test_auc_ci_high": auc + 0.04, "test_accuracy": 0.7}
    run_id = fake_run(model, metrics=metrics, stage=STAGE_EVALUATE, data_digest=target_digest,
                      experiment=TARGET_EXPERIMENT)
    client = mlflow.MlflowClient()
    for key, value in {TAG_SOURCE_RUN: source_run, TAG_SOURCE_DATA_DIGEST: SOURCE_DIGEST,
                       TAG_TARGET_DATA_DIGEST: target_digest}.items():
        client.set_tag(run_id, key, value)
    client.log_param(run_id, "data", "exp1-to-exp2")
    client.log_param(run_id, "split", "test")
    time.sleep(0.01)  # distinct start times: "newest" is well defined
    return run_id


def screened(models=("DenseNet121", "ResNet50V2")) -> dict[str, str]:
    return {model: fake_run(model, data_digest=SOURCE_DIGEST) for model in models}


def test_table_pairs_each_train_run_with_its_newest_cross_evaluation(project):
    import mlflow

    runs = screened()
    fake_evaluate(runs["DenseNet121"], 0.60)
    newest = fake_evaluate(runs["DenseNet121"], 0.80)
    fake_evaluate(runs["DenseNet121"], 0.99, target_digest=SOURCE_DIGEST)  # same data: not cross-experiment
    sources = [(model, mlflow.get_run(run_id)) for model, run_id in runs.items()]
    frame = generalisation.generalisation_frame(sources)
    assert list(frame["model"]) == ["DenseNet121"]  # ResNet50V2 was never evaluated elsewhere
    row = frame.iloc[0]
    in_auc = full_metrics("DenseNet121")["test_auc"]
    assert row["evaluate_run_id"] == newest and row["target_data_digest"] == TARGET_DIGEST
    assert row["auc_in"] == in_auc and row["auc_cross"] == 0.80
    assert math.isclose(row["drop"], in_auc - 0.80)
    assert row["auc_cross_ci_low"] == 0.75 and math.isclose(row["auc_cross_ci_high"], 0.84)


def test_report_shows_in_and_cross_auc_with_cis_and_the_drop(project, capsys):
    runs = screened()
    fake_evaluate(runs["ResNet50V2"], 0.70)
    code = main(["report", "--experiment", EXPERIMENT, "--out", "out"])
    assert code == 0, capsys.readouterr().err
    text = (project / "out" / "README.md").read_text()
    assert "## Generalisation — in-distribution vs cross-experiment AUC" in text
    in_auc = full_metrics("ResNet50V2")["test_auc"]
    expected = (f"| ResNet50V2 | {in_auc:.3f} [{in_auc - 0.01:.3f}, {min(1.0, in_auc + 0.01):.3f}] "
                f"| exp1-to-exp2 `bbbbbbbb` (test) | 0.700 [0.650, 0.740] | {in_auc - 0.70:+.3f} |")
    assert expected in text
    table = pd.read_csv(project / "out" / "tables" / "generalisation.csv")
    assert list(table["model"]) == ["ResNet50V2"]
    assert math.isclose(table.loc[0, "drop"], in_auc - 0.70)


def test_report_without_evaluate_runs_has_no_generalisation_section(project, capsys):
    screened()
    assert main(["report", "--experiment", EXPERIMENT, "--out", "out"]) == 0, capsys.readouterr().err
    assert "## Generalisation" not in (project / "out" / "README.md").read_text()
    assert not (project / "out" / "tables" / "generalisation.csv").exists()


# -- paper's generalisation step ------------------------------------------------------------------------
class Kept:
    def __init__(self, model, run_id):
        self.model, self.run_id = model, run_id


def test_generalise_is_off_by_default_and_checks_the_target_first():
    from medfake.core.config import load_config
    from medfake.core.errors import UserError

    assert load_config("quickstart").study.generalise_to is None
    assert generalisation.generalise(load_config("quickstart"), "", [Kept("X", "r")], print) == {}
    cfg = load_config("quickstart", ["study.generalise_to=study-cpu"])
    with pytest.raises(UserError, match="study.generalise_to study-cpu: its data.image_size"):
        generalisation.target_config(cfg, "")
    target = generalisation.target_config(cfg, "data.image_size=96 experiment=elsewhere")
    assert target.experiment == "elsewhere" and target.data.image_size == 96


def test_generalise_evaluates_each_kept_run_once_then_reuses(project, monkeypatch):
    import mlflow

    from medfake.core.config import load_config
    from medfake.core.contract import TAG_CONFIG_DIGEST

    runs = screened()
    cfg = load_config("quickstart", ["study.generalise_to=quickstart", f"experiment={EXPERIMENT}"])
    overrides = f"experiment={TARGET_EXPERIMENT}"
    target = generalisation.target_config(cfg, overrides)
    calls = []

    def recording_evaluate(model, target_cfg, data_ref, split, progress=True, nested=False):
        calls.append((model, data_ref, split, nested, target_cfg.experiment))
        run_id = fake_evaluate(model, 0.7)
        mlflow.MlflowClient().set_tag(run_id, TAG_CONFIG_DIGEST, target_cfg.digest())
        return run_id

    monkeypatch.setattr(generalisation, "evaluate", recording_evaluate)
    kept = [Kept(model, run_id) for model, run_id in runs.items()]
    said = []
    first = generalisation.generalise(cfg, overrides, kept, said.append)
    assert sorted(first) == sorted(runs.values()) and len(calls) == 2
    assert all(call[1:] == ("quickstart", "test", True, TARGET_EXPERIMENT) for call in calls)
    again = generalisation.generalise(cfg, overrides, kept, said.append)
    assert again == first and len(calls) == 2 and sum("reusing" in line for line in said) == 2
    assert target.digest() == mlflow.get_run(first[runs["DenseNet121"]]).data.tags[TAG_CONFIG_DIGEST]
