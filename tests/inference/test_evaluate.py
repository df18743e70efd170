"""The evaluate step: a detector trained by the real train step, scored on a second dataset without retraining."""

from __future__ import annotations

import pandas as pd
import pytest
from tiny_data import TINY, tiny_dataset

from medfake.cli import main
from medfake.core import contract
from medfake.core.config import load_config
from medfake.core.errors import UserError
from medfake.data.preprocess import cache_path
from medfake.inference import evaluate as ev

SOURCE_DIGEST = "d" * 16
TARGET_DIGEST = "e" * 16
SMALL_DIGEST = "f" * 16


def sets(*extra: str) -> list[str]:
    return [arg for item in (*TINY, *extra) for arg in ("--set", item)]


def second_dataset(cfg, digest: str, size: int = 32):
    """Another tiny dataset (other noise, other scans): the 'other experiment' of the test."""
    dataset = tiny_dataset(cache_path(cfg, digest), size=size, seed=3)
    manifest = pd.read_csv(dataset.path / "manifest.csv", keep_default_na=False, dtype=str)
    manifest["scan_id"] = "x" + manifest["scan_id"]
    manifest.to_csv(dataset.path / "manifest.csv", index=False)
    return dataset


def one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("medfake evaluate: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.slow
def test_evaluate_a_trained_detector_on_another_dataset(tracking_store, capsys, artifact):
    import mlflow
    from sklearn.metrics import roc_auc_score

    from medfake.training.train import resolve_plan, train

    cfg = load_config("quickstart", TINY)
    tiny_dataset(cache_path(cfg, SOURCE_DIGEST))
    second_dataset(cfg, TARGET_DIGEST)
    source = train(resolve_plan("mobilenetv3large", cfg, "screen"), data_digest=SOURCE_DIGEST, progress=False)
    capsys.readouterr()

    code = main(["evaluate", "--model", source, "--data", "quickstart", *sets(), "--data-digest", TARGET_DIGEST,
                 "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    runs = mlflow.search_runs(experiment_names=[cfg.experiment], output_format="list",
                              filter_string=f"tags.`{contract.TAG_STAGE}` = '{contract.STAGE_EVALUATE}'")
    assert len(runs) == 1
    run = runs[0]
    tags, metrics = run.data.tags, run.data.metrics
    assert run.info.status == "FINISHED"
    assert tags[contract.TAG_SOURCE_RUN] == source
    assert tags[contract.TAG_SOURCE_DATA_DIGEST] == SOURCE_DIGEST
    assert tags[contract.TAG_TARGET_DATA_DIGEST] == TARGET_DIGEST == tags[contract.TAG_DATA_DIGEST]
    assert run.data.params["model"] == "MobileNetV3Large" and run.data.params["split"] == "test"
    for name in ("accuracy", "precision", "recall", "specificity", "f1", "auc", "h", "loss", "recall_fm", "fpr_tb"):
        assert f"test_{name}" in metrics, name
    assert metrics["test_auc_ci_low"] <= metrics["test_auc"] <= metrics["test_auc_ci_high"]
    assert metrics["test_seen_scan_share"] == 0.0  # the target's scans are not the source's
    # No truth in these data: truth metrics absent (not zeros), said once.
    assert not any(key.endswith(contract.TRUE_SUFFIX) for key in metrics)
    assert err.count("truth metrics: none") == 1
    # The logged AUC is the one recomputed from the logged predictions.
    pred = pd.read_csv(artifact(run.info.run_id, "predictions/test.csv"))
    assert tuple(pred.columns) == contract.PREDICTION_COLUMNS
    assert pred["scan_id"].str.startswith("x").all()
    assert roc_auc_score(pred["label"], pred["score"]) == pytest.approx(metrics["test_auc"], abs=1e-6)
    plots = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert {"plots/roc.png", "plots/precision_recall.png", "plots/confusion_matrix.png"} <= plots
    assert source in out

    # A model/data size mismatch names both, one line, exit 2, before any run is opened.
    second_dataset(cfg, SMALL_DIGEST, size=40)
    code = main(["evaluate", "--model", source, "--data", "quickstart", *sets("data.image_size=40"),
                 "--data-digest", SMALL_DIGEST, "--quiet"])
    one_line_error(code, capsys.readouterr().err, "32×32×1", "40×40×1", source)
    assert len(mlflow.search_runs(experiment_names=[cfg.experiment], output_format="list",
                                  filter_string=f"tags.`{contract.TAG_STAGE}` = '{contract.STAGE_EVALUATE}'")) == 1


def test_a_run_without_a_logged_model_is_one_line(tracking_store, capsys):
    import mlflow

    from medfake.core import tracking

    tracking.setup("medfake-test")
    client = mlflow.MlflowClient()
    run_id = client.create_run(client.get_experiment_by_name("medfake-test").experiment_id,
                               tags={contract.TAG_STAGE: "preprocess"}).info.run_id
    client.set_terminated(run_id)
    code = main(["evaluate", "--model", run_id, "--data", "quickstart", *sets(), "--quiet"])
    one_line_error(code, capsys.readouterr().err, run_id, "has no logged model")
    code = main(["evaluate", "--model", "0" * 32, "--data", "quickstart", *sets(), "--quiet"])
    one_line_error(code, capsys.readouterr().err, "no run")


def test_channel_and_size_mismatches_name_the_model_and_the_data():
    three = ev.Source("runs:/abc/model", "runs:/abc/model", "abc", None, "X", None, (32, 32, 3))
    with pytest.raises(UserError, match=r"takes 32×32×3 slices but data exp1-to-exp2 holds 32×32×1"):
        ev.check_fits(three, None, 32, "exp1-to-exp2")
    sized = ev.Source("model.onnx", "model.onnx", None, None, "detector", None, None)
    with pytest.raises(UserError, match=r"model model.onnx takes 64×64×1 slices but data q holds 32×32×1"):
        ev.check_fits(sized, 64, 32, "q")
    ev.check_fits(sized, None, 32, "q")  # unknown input size: the first batch will tell


def test_seen_scan_share_counts_the_scored_scans_the_source_trained_or_validated_on(tmp_path):
    cfg = load_config("quickstart", [*TINY, f"data.cache_dir={tmp_path / 'cache'}"])
    source_data = tiny_dataset(cache_path(cfg, SOURCE_DIGEST), size=32)
    scans = {split: sorted(set(part["scan_id"])) for split, part in source_data.manifest.groupby("split")}
    train, val, test = scans["train"][0], scans["val"][0], scans["test"][0]
    assert len({train, val, test}) == 3
    rows = pd.DataFrame({"scan_id": [train, train, val, test, "other-scan"]})
    source = ev.Source("runs:/abc/model", "runs:/abc/model", "abc", SOURCE_DIGEST, "X", "0", None)
    target = second_dataset(cfg, TARGET_DIGEST)
    # 2 of the 4 distinct scored scans were in the source's train or val split (its test scan is not "seen").
    assert ev.seen_scan_share(source, target, cfg, rows) == pytest.approx(2 / 4)
    assert ev.seen_scan_share(source, source_data, cfg, rows) == pytest.approx(2 / 4)  # same dataset: no reload
    assert ev.seen_scan_share(source, target, cfg, rows.iloc[:0]) is None
    unknown = ev.Source("model.onnx", "model.onnx", None, None, "detector", None, None)
    assert ev.seen_scan_share(unknown, target, cfg, rows) is None
    gone = ev.Source("runs:/abc/model", "runs:/abc/model", "abc", SMALL_DIGEST, "X", "0", None)
    assert ev.seen_scan_share(gone, target, cfg, rows) is None  # the source's cache is not here


def test_check_fits_accepts_a_matching_single_channel_model():
    square = ev.Source("runs:/abc/model", "runs:/abc/model", "abc", None, "X", None, (32, 32, 1))
    ev.check_fits(square, 64, 32, "q")  # the signature's size wins over the config's
    loose = ev.Source("runs:/abc/model", "runs:/abc/model", "abc", None, "X", None, (None, None, None))
    ev.check_fits(loose, 32, 32, "q")  # an unnamed channel count is the one CT channel
    with pytest.raises(UserError, match=r"takes 64×64×1 slices but data q holds 32×32×1 slices \(set "
                                        r"data.image_size=64 or evaluate a detector trained at this size\)$"):
        ev.check_fits(loose, 64, 32, "q")
    no_channels = ev.Source("m", "m", None, None, "X", None, (None, None, 2))
    with pytest.raises(UserError, match=r"takes 2-channel input slices"):
        ev.check_fits(no_channels, None, 32, "q")
