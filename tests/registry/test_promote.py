"""The promote step on a throwaway MLflow store with tiny real Keras models.

One store serves the module (a fresh SQLite store takes seconds to create); each test has its own
experiment and registered model name.
"""

from __future__ import annotations

import numpy as np
import pytest

from medfake.registry import promote as pm
from medfake.registry.promote_output import format_decision
from medfake.core.errors import UserError

DIGEST = "data-aaaa"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("promote-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        patch.chdir(folder)
        import mlflow

        mlflow.set_tracking_uri(uri)
        yield uri


@pytest.fixture(scope="module")
def tiny_model():
    import keras

    hu = keras.Input((8, 8, 1), name="hu")
    x = keras.layers.Flatten()(hu)
    x = keras.layers.Dense(2, activation="relu")(x)
    return keras.Model(hu, keras.layers.Dense(1, activation="sigmoid", name="probability")(x))


class Sandbox:
    """One test's experiment and registered model in the shared store, with train-like runs."""

    def __init__(self, test_name: str, model):
        self.experiment = f"promote-{test_name}"
        self.name = f"detector-{test_name}"
        self.model = model

    def log_run(self, model_name: str, seed: int, val_h: float, digest: str = DIGEST, stage: str = "screen",
                lr: float = 1e-3, with_model: bool = True) -> str:
        """A finished run like train's: params, tags, metrics and (optionally) the model artifact."""
        import mlflow
        from mlflow.models import infer_signature

        from medfake.core import tracking

        tracking.setup(self.experiment)
        example = np.zeros((1, 8, 8, 1), np.float32)
        with mlflow.start_run(run_name=f"{model_name}-s{seed}") as run:
            mlflow.set_tags({tracking.TAG_STAGE: stage, tracking.TAG_DATA_DIGEST: digest, "medfake.model": model_name})
            mlflow.log_params({"model": model_name, "seed": seed, "data_digest": digest, "data.image_size": 8,
                               "train.phase1_lr": lr, "precision_used": "float32"})
            mlflow.log_metrics({"val_h": val_h, "val_auc": val_h + 0.01, "test_auc": val_h - 0.02})
            if with_model:
                signature = infer_signature(example, self.model.predict(example, verbose=0))
                mlflow.keras.log_model(self.model, name="model", signature=signature, pip_requirements=["keras"])
        return run.info.run_id

    def promote(self, **kwargs) -> pm.Decision:
        return pm.promote(self.experiment, name=self.name, **kwargs)

    def versions(self) -> list:
        from mlflow.tracking import MlflowClient

        return MlflowClient().search_model_versions(f"name='{self.name}'")

    def alias(self, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        try:
            return str(MlflowClient().get_model_version_by_alias(self.name, alias).version)
        except MlflowException:
            return None


@pytest.fixture
def box(store, tiny_model, request) -> Sandbox:
    return Sandbox(request.node.name, tiny_model)


def test_first_champion_is_the_best_group_mean_and_its_best_run(box):
    # model A: best single run (0.95) but mean 0.825 over its repeats; model B: one run, 0.85.
    a1 = box.log_run("ModelA", 1, 0.95)
    box.log_run("ModelA", 2, 0.70, stage="repeat")
    b1 = box.log_run("ModelB", 1, 0.85)
    box.log_run("ModelC", 1, 0.99, with_model=False)  # no model: never a candidate
    decision = box.promote()
    assert [g.model for g in decision.groups] == ["ModelB", "ModelA"]
    assert decision.groups[1].mean == pytest.approx(0.825)
    assert decision.groups[1].std == pytest.approx(np.std([0.95, 0.70], ddof=1))
    assert decision.groups[1].best.run_id == a1
    assert decision.chosen.run_id == b1
    assert decision.registered_new and decision.moved
    assert "no champion yet" in decision.reason
    assert any("no logged model" in note for note in decision.notes)
    (version,) = box.versions()
    assert version.run_id == b1
    assert version.tags["medfake.data_digest"] == DIGEST
    assert version.tags["medfake.model"] == "ModelB"
    assert float(version.tags["val_h"]) == pytest.approx(0.85)
    assert box.alias(pm.CHAMPION) == box.alias(pm.CHALLENGER) == str(version.version)
    text = format_decision(decision, box.name)
    assert "0.8250 ± 0.1768" in text and "is the one registered" in text


def test_promoting_twice_registers_nothing_new(box):
    box.log_run("ModelA", 1, 0.80)
    first = box.promote()
    second = box.promote()
    assert first.registered_new and not second.registered_new
    assert len(box.versions()) == 1
    assert second.version == first.version and not second.moved
    assert "already the champion" in second.reason
    assert box.alias(pm.CHAMPION) == first.version


def test_a_better_run_takes_champion(box):
    box.log_run("ModelA", 1, 0.80)
    first = box.promote()
    better = box.log_run("ModelB", 1, 0.90)
    decision = box.promote(min_delta=0.05)
    assert decision.chosen.run_id == better and decision.registered_new
    assert decision.moved and decision.champion_before == first.version
    assert box.alias(pm.CHAMPION) == box.alias(pm.CHALLENGER) == decision.version != first.version
    assert "beats the champion's 0.8000 by 0.1000" in decision.reason


def test_not_better_by_min_delta_leaves_champion_and_says_why(box):
    box.log_run("ModelA", 1, 0.80)
    first = box.promote()
    box.log_run("ModelB", 1, 0.81)
    decision = box.promote(min_delta=0.05)
    assert decision.registered_new and not decision.moved
    assert box.alias(pm.CHAMPION) == first.version
    assert box.alias(pm.CHALLENGER) == decision.version != first.version
    assert "by only 0.0100 < min-delta 0.05" in decision.reason
    assert "champion stays on version" in format_decision(decision, box.name)


def test_dry_run_changes_nothing(box):
    box.log_run("ModelA", 1, 0.80)
    first = box.promote()
    box.log_run("ModelB", 1, 0.90)
    decision = box.promote(dry_run=True)
    assert decision.moved and decision.registered_new and decision.version is None
    assert len(box.versions()) == 1
    assert box.alias(pm.CHAMPION) == box.alias(pm.CHALLENGER) == first.version
    assert "[dry run] would move alias champion" in format_decision(decision, box.name)


def test_another_data_digest_is_not_comparable(box):
    box.log_run("ModelA", 1, 0.80, digest="data-old")
    first = box.promote()
    box.log_run("ModelB", 1, 0.99, digest="data-new")
    decision = box.promote()
    assert decision.groups[0].data_digest == "data-new" and not decision.moved
    assert "another data digest" in decision.reason
    assert box.alias(pm.CHAMPION) == first.version
    assert box.alias(pm.CHALLENGER) == decision.version


def test_repeats_group_by_setup_not_seed(box):
    box.log_run("ModelA", 1, 0.80)
    box.log_run("ModelA", 2, 0.90)
    box.log_run("ModelA", 3, 0.60, lr=1e-2)  # another setup of the same backbone
    decision = box.promote(dry_run=True)
    sizes = sorted(len(g.runs) for g in decision.groups)
    assert sizes == [1, 2]
    assert decision.groups[0].mean == pytest.approx(0.85)


def test_metric_direction_and_loss_ranking():
    assert pm.metric_direction("val_h") == 1
    assert pm.metric_direction("val_loss") == -1
    assert pm.metric_direction("test_ece") == -1
    runs = [pm.Candidate(f"r{i}", m, "0", "screen", "d", "s", v) for i, (m, v) in
            enumerate([("A", 0.3), ("A", 0.5), ("B", 0.35)])]
    groups = pm.group_candidates(runs, direction=-1)
    assert [g.model for g in groups] == ["B", "A"]
    assert groups[1].best.run_id == "r0"  # lowest loss of A


def test_compare_rule():
    ok, why = pm.compare(0.9, 0.8, True, 0.05, 1, "val_h")
    assert ok and "≥ min-delta" in why
    assert not pm.compare(0.8, 0.8, True, 0.0, 1, "val_h")[0]  # a tie does not move the alias
    assert not pm.compare(0.9, None, True, 0.0, 1, "val_h")[0]
    assert pm.compare(0.2, 0.3, True, 0.05, -1, "val_loss")[0]


def test_cli_errors_are_one_line(box, capsys):
    from medfake.cli import main

    assert main(["promote", "--experiment", "no-such-experiment"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medfake promote: error: MLflow experiment 'no-such-experiment' does not exist")
    assert "\n" not in err
    with pytest.raises(UserError, match="min-delta"):
        box.promote(min_delta=-1)


def test_cli_prints_the_decision(box, capsys):
    from medfake.cli import main

    box.log_run("ModelA", 1, 0.80)
    assert main(["promote", "--experiment", box.experiment, "--name", box.name, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[dry run] would register it as a new version" in out
    assert box.versions() == []
    assert main(["promote", "--experiment", box.experiment, "--name", box.name, "--dry-run", "false"]) == 0
    assert len(box.versions()) == 1 and box.alias(pm.CHAMPION) == "1"


def test_a_detector_no_better_than_chance_never_becomes_champion(box, capsys):
    # the quickstart once made a detector that called every slice real (val_h 0.0) champion
    # because it was the first candidate; the floor (chance, 0.5) stops that
    from medfake.cli import main

    useless = box.log_run("ModelA", 1, 0.0)
    decision = box.promote()
    assert decision.chosen.run_id == useless and not decision.moved
    assert box.alias(pm.CHAMPION) is None and box.alias(pm.CHALLENGER) == "1"
    assert decision.reason.startswith("val_h 0.0000 is not above the floor 0.5 (chance)")
    box.log_run("ModelB", 1, 0.5)  # exactly chance is not above it
    assert not box.promote().moved
    good = box.log_run("ModelC", 1, 0.51)
    decision = box.promote()
    assert decision.moved and decision.chosen.run_id == good and box.alias(pm.CHAMPION) == "3"
    # a champion stays when the next best group falls below the floor the user sets
    assert not box.promote(min_score=0.6).moved and box.alias(pm.CHAMPION) == "3"
    # the CLI: a number, 'none' (no floor), or one clear line
    capsys.readouterr()
    assert main(["promote", "--experiment", box.experiment, "--name", box.name, "--min-score", "0.9",
                 "--dry-run"]) == 0
    assert "is not above the floor 0.9 set by --min-score" in capsys.readouterr().out
    assert main(["promote", "--experiment", box.experiment, "--name", box.name, "--min-score", "high"]) == 2
    assert "--min-score must be a number or 'none'" in capsys.readouterr().err

