"""The train step on tiny data: cache equivalence, resume, run status, end to end."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from medfake.core import logged_models
from medfake.core.config import load_config
from medfake.core.errors import UserError

from tiny_data import TINY, tiny_dataset, tiny_plan  # noqa: F401


def test_feature_cache_matches_naive_frozen_fit(tmp_path):
    from medfake.models import detector as det
    from medfake.training.train import train_detector

    dataset = tiny_dataset(tmp_path / "ds")
    results = {}
    for cached in (True, False):
        # Dropout off (the quickstart config has 0.3): its random masks would differ between the
        # two paths; what must match is the computation.
        plan = tiny_plan([f"train.feature_cache={str(cached).lower()}", "train.phase2_epochs=0", "model.dropout=0.0"])
        out = train_detector(plan, dataset, None, lambda *a: None, progress=False)
        from medfake.models.registry import get_backbone

        head = det.head_model(get_backbone("MobileNetV3Large").feature_width, (16, 8), 0.0)
        det.copy_head_weights(out["model"], head)
        results[cached] = (out["states"][0].best_val_loss, [w.copy() for w in head.get_weights()])
    (loss_a, w_a), (loss_b, w_b) = results[True], results[False]
    assert loss_a == pytest.approx(loss_b, abs=1e-4)
    for a, b in zip(w_a, w_b):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_phase2_rate_of_a_backbone_without_normalisation():
    from medfake.training.train import phase2_rate

    cfg = load_config("quickstart", ["train.phase2_lr_unnormalised=3e-5"])
    assert phase2_rate(cfg, normalised=True) == cfg.train.phase2_lr == 1e-3
    assert phase2_rate(cfg, normalised=False) == 3e-5
    assert phase2_rate(load_config("quickstart"), normalised=False) == 1e-3  # unset: the shared rate
    paper = load_config("paper")  # the study's protocol: one rate for all 13
    assert paper.train.phase2_lr_unnormalised is None
    assert phase2_rate(paper, normalised=False) == phase2_rate(paper, normalised=True) == 1e-5
    with pytest.raises(UserError, match="phase-2 learning rate must be > 0"):
        phase2_rate(cfg.replace(**{"train.phase2_lr_unnormalised": 0.0}), normalised=False)


def test_batchnorm_recalibration_rows_are_distinct_training_rows_fixed_per_seed():
    from medfake.training.train import _recalibration_batches

    rows = np.arange(100, 130)
    cfg = tiny_plan(["train.bn_recalibration_batches=3"]).cfg
    batches = _recalibration_batches(cfg, rows)
    assert [len(b) for b in batches] == [8, 8, 8]  # train.batch_size=8
    taken = np.concatenate(batches)
    assert len(set(taken.tolist())) == 24 and set(taken.tolist()) <= set(rows.tolist())
    assert all(np.all(np.diff(b) > 0) for b in batches)  # sorted: one memmap read each
    again = _recalibration_batches(cfg, rows)
    assert all(np.array_equal(x, y) for x, y in zip(batches, again))
    other = _recalibration_batches(tiny_plan(["train.bn_recalibration_batches=3", "seed=7"]).cfg, rows)
    assert not all(np.array_equal(x, y) for x, y in zip(batches, other))
    assert sum(len(b) for b in _recalibration_batches(tiny_plan(["train.bn_recalibration_batches=9"]).cfg, rows)) == 30
    assert _recalibration_batches(tiny_plan(["train.bn_recalibration_batches=0"]).cfg, rows) == []
    assert load_config("paper").train.bn_recalibration_batches == 0  # the study's protocol: off
    with pytest.raises(UserError, match="train.bn_recalibration_batches must be ≥ 0"):
        _recalibration_batches(tiny_plan(["train.bn_recalibration_batches=-1"]).cfg, rows)


def test_weight_average_momentum_is_checked_and_off_in_the_paper():
    from medfake.training.train import _ema_momentum

    assert load_config("paper").train.ema_momentum == 0  # the study keeps the last step's weights
    assert _ema_momentum(tiny_plan(["train.ema_momentum=0.9"]).cfg) == pytest.approx(0.9)
    for bad in ("1", "-0.1"):  # refused when the plan is resolved, before any run or work starts
        with pytest.raises(UserError, match=r"train.ema_momentum must be in \[0, 1\)"):
            tiny_plan([f"train.ema_momentum={bad}"])


def test_unknown_model_and_small_size_are_one_line_errors():
    with pytest.raises(UserError, match="Xception"):
        tiny_plan(model="resnet9000")
    with pytest.raises(UserError, match="minimum input size 71"):
        tiny_plan(model="xception")


@pytest.mark.slow
def test_train_end_to_end_logs_the_contract(tmp_path, tracking_store, artifact):
    import mlflow

    from medfake.cli import main
    from medfake.data.preprocess import cache_path
    from medfake.training.train import resolve_plan, train

    ema = load_config("quickstart").train.ema_momentum
    cfg = load_config("quickstart", [*TINY, "train.bn_recalibration_batches=2", f"train.ema_momentum={ema}"])  # as the quickstart's recipe
    dataset = tiny_dataset(cache_path(cfg, "d" * 16), phantom_like=True)
    plan = resolve_plan("mobilenetv3large", cfg, "screen")
    run_id = train(plan, data_digest=dataset.digest, progress=False)
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "MobileNetV3Large-s42"
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    for split in ("train", "val", "test"):
        for name in ("accuracy", "precision", "recall", "specificity", "f1", "auc", "h", "loss"):
            assert f"{split}_{name}" in metrics
    for key in ("test_auc_ci_low", "test_auc_ci_high", "test_ece", "params_m", "latency_ms_mean",
                "phase1_seconds", "test_silhouette", "test_knn_acc", "test_probe_auc"):
        assert key in metrics, key
    assert metrics["test_auc_ci_low"] <= metrics["test_auc"] <= metrics["test_auc_ci_high"]
    # Phantom-like manifest: metrics against the truth, label noise, the per-type breakdown with CIs.
    for split in ("train", "val", "test"):
        for name in ("accuracy", "precision", "recall", "specificity", "f1", "auc", "h", "loss"):
            assert f"{split}_{name}_true" in metrics, (split, name)
    assert metrics["test_label_noise"] == pytest.approx(1 / 3)  # 2 of the 6 test fakes untampered
    for name in ("recall_fm", "recall_fb", "fpr_tm", "fpr_tb", "fpr_lidc", "auc_true", "recall_fm_true"):
        low, value, high = (metrics[f"test_{name}{s}"] for s in ("_ci_low", "", "_ci_high"))
        assert low <= value <= high, name
    assert not [k for k in metrics if "scan_" in k]  # a tiny frame without series: no scan-level keys
    assert tags["medfake.stage"] == "screen" and tags["medfake.data_digest"] == dataset.digest
    assert params["model"] == "MobileNetV3Large" and params["weights_used"] == "none"
    assert params["train.bn_recalibration_batches"] == "2" and float(params["train.ema_momentum"]) == ema > 0
    assert float(params["phase2_lr_used"]) == float(params["train.phase2_lr"])  # BatchNorm: the shared rate
    history = mlflow.MlflowClient().get_metric_history(run_id, "phase1_val_loss")
    assert [m.step for m in history] == [0, 1, 2]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    assert {"plots", "predictions", "embeddings", "config.yaml"} <= artifacts
    # The predictions file reproduces the logged AUC (reports redraw ROC curves from it).
    from sklearn.metrics import roc_auc_score

    pred = pd.read_csv(artifact(run_id, "predictions/test.csv"))
    assert roc_auc_score(pred["label"], pred["score"]) == pytest.approx(metrics["test_auc"], abs=1e-6)
    truth = pred["truly_tampered"].fillna(0).astype(int)
    assert roc_auc_score(truth, pred["score"]) == pytest.approx(metrics["test_auc_true"], abs=1e-6)
    from medfake.core.contract import PREDICTION_COLUMNS

    assert tuple(pred.columns) == PREDICTION_COLUMNS and len(pred) == 12
    # The logged detector scores HU slices through pyfunc exactly like the Keras model.
    x = np.asarray(dataset.images[:4], np.float32)[..., None]
    scored = np.asarray(logged_models.load_pyfunc(f"runs:/{run_id}/model").predict(x)).reshape(-1)
    assert scored.shape == (4,) and np.all((scored >= 0) & (scored <= 1))
    # MLflow 3's Models view: the test metrics are linked to the run's logged model.
    (output,) = run.outputs.model_outputs
    linked = {m.key: m.value for m in mlflow.get_logged_model(output.model_id).metrics or []}
    assert linked["test_auc"] == pytest.approx(metrics["test_auc"]) and "test_h" in linked
    # Same seed, same data → same test metrics (repeatable CPU runs).
    again = mlflow.get_run(train(plan, data_digest=dataset.digest, progress=False)).data.metrics
    assert again["test_auc"] == pytest.approx(metrics["test_auc"], abs=1e-6)
    assert again["test_loss"] == pytest.approx(metrics["test_loss"], abs=1e-5)
    # The baseline goes through the same step and metric names.
    code = main(["train", "--model", "baseline", "--data", dataset.digest, "--quiet", *sum((["--set", s] for s in TINY), [])])
    assert code == 0
    base = mlflow.search_runs(experiment_names=["medfake-test"], filter_string="params.model = 'baseline'")
    assert len(base) == 1 and "metrics.test_h" in base.columns and "metrics.test_recall_fb" in base.columns
    # `scan --model RUN` of the baseline scores through its pyfunc, as the logged model does
    from medfake.inference.loading import load_scorer

    scorer = load_scorer(base["run_id"][0])
    direct = np.asarray(logged_models.load_pyfunc(f"runs:/{base['run_id'][0]}/model").predict(x)).reshape(-1)
    assert scorer.name == "pyfunc" and np.array_equal(scorer.predict(x), direct.astype(np.float32))


@pytest.mark.slow
def test_interrupted_run_is_killed_then_resumes(tmp_path, tracking_store, monkeypatch):
    import mlflow

    from medfake.training import fitting
    from medfake.data.preprocess import cache_path
    from medfake.training.train import resolve_plan, train

    cfg = load_config("quickstart", TINY)
    dataset = tiny_dataset(cache_path(cfg, "e" * 16))
    plan = resolve_plan("MobileNetV3Large", cfg, "screen")
    real_save = fitting.Checkpoints.save
    calls = {"n": 0}

    def save_then_die(self, model, state):
        real_save(self, model, state)
        calls["n"] += 1
        if calls["n"] == 2:  # after the second epoch of phase 1
            raise KeyboardInterrupt

    monkeypatch.setattr(fitting.Checkpoints, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(plan, data_digest=dataset.digest, progress=False)
    killed = mlflow.search_runs(experiment_names=["medfake-test"], output_format="list")[0]
    assert killed.info.status == "KILLED"
    monkeypatch.setattr(fitting.Checkpoints, "save", real_save)
    run_id = train(plan, data_digest=dataset.digest, resume=killed.info.run_id, progress=False)
    assert run_id == killed.info.run_id
    done = mlflow.get_run(run_id)
    assert done.info.status == "FINISHED" and "test_auc" in done.data.metrics
    # No truth in the manifest (real data): no `_true` key, no label noise — absent, not zero.
    assert not [k for k in done.data.metrics if "_true" in k or "label_noise" in k]
    assert "test_recall_fm" in done.data.metrics and "test_recall_fb" not in done.data.metrics
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "phase1_val_loss")]
    assert steps == [0, 1, 2]  # resumed at epoch 2, nothing redone


def test_failing_run_ends_failed_with_reason(tmp_path, tracking_store, monkeypatch):
    import mlflow

    from medfake.training import train as train_module
    from medfake.data.preprocess import cache_path

    cfg = load_config("quickstart", TINY)
    dataset = tiny_dataset(cache_path(cfg, "f" * 16))
    plan = train_module.resolve_plan("MobileNetV3Large", cfg, "screen")

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(train_module, "train_detector", broken)
    with pytest.raises(RuntimeError):
        train_module.train(plan, data_digest=dataset.digest, progress=False)
    run = mlflow.search_runs(experiment_names=["medfake-test"], output_format="list")[0]
    assert run.info.status == "FAILED" and "disk on fire" in run.data.tags["medfake.failure"]


def test_missing_weights_file_fails_the_run_with_one_line(tmp_path, tracking_store, capsys):
    from medfake.cli import main
    from medfake.data.preprocess import cache_path

    cfg = load_config("quickstart", TINY)
    dataset = tiny_dataset(cache_path(cfg, "a" * 16))
    code = main(["train", "--model", "MobileNetV3Large", "--data", dataset.digest, "--quiet",
                 *sum((["--set", s] for s in TINY), []), "--set", "model.weights=missing/weights.h5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "missing/weights.h5" in err[0]
    import mlflow

    run = mlflow.search_runs(experiment_names=["medfake-test"], output_format="list")[0]
    assert run.info.status == "FAILED" and "missing/weights.h5" in run.data.tags["medfake.failure"]
