"""What the MLflow UI shows: the experiment kind tag and, under `mlflow run`, the step's run name."""

from __future__ import annotations

from medfake.core import tracking
from medfake.core.contract import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, TAG_RUN_NAME


def test_experiment_kind_and_run_name_under_a_launcher_run(tracking_store, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    experiment_id = tracking.setup("medfake-ui")
    assert MlflowClient().get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    launcher = MlflowClient().create_run(experiment_id, run_name="puzzled-cat-816")  # as `mlflow run` does
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher.info.run_id)
    with tracking.run("medfake-ui", "Xception-s42", "screen") as active:
        assert active.info.run_id == launcher.info.run_id
    run = mlflow.get_run(launcher.info.run_id)
    assert run.data.tags[TAG_RUN_NAME] == "Xception-s42" and run.info.run_name == "Xception-s42"
    assert run.info.status == "FINISHED"


def test_ui_links_open_the_model_training_layout(tracking_store, monkeypatch):
    from medfake.core.contract import UI_DEFAULT_URL, UI_WORKFLOW_QUERY

    assert tracking.ui_url("3") == f"{UI_DEFAULT_URL}/#/experiments/3/runs?{UI_WORKFLOW_QUERY}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker.example:5000/")
    assert tracking.ui_url("3", "abc") == f"http://tracker.example:5000/#/experiments/3/runs/abc?{UI_WORKFLOW_QUERY}"
