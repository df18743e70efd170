"""The ensemble step: combiners against numpy, stacking fitted on validation only, member checks,
and (slow) an ensemble of two detectors trained by the real train step, logged, served and scanned."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dicom_factory import phantom_volume, write_series
from study_fakes import base_config, fake_run, full_metrics
from tiny_data import TINY, tiny_dataset

from medfake.cli import main
from medfake.core import contract, logged_models
from medfake.core.errors import UserError
from medfake.study import ensemble as step
from medfake.study import ensemble_compare as cmp
from medfake.training import metrics as mt

SIZE = 16


def tiny_detector(seed: int, size: int = SIZE):
    """A small model with the detector's contract: input "hu", Dense(1, sigmoid) output "probability"."""
    import keras

    keras.utils.set_random_seed(seed)
    hu = keras.Input((size, size, 1), name="hu")
    x = keras.layers.Rescaling(1 / 300.0, offset=2.0)(hu)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(8, activation="relu", name="embedding")(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="probability",
                             bias_initializer=keras.initializers.Constant(0.3 * seed - 0.5))(x)
    return keras.Model(hu, out, name="medfake_tiny")


def hu_batch(n=12, seed=0, size=SIZE):
    return np.random.default_rng(seed).normal(-500, 400, size=(n, size, size, 1)).astype(np.float32)


def logit(p):
    p = np.asarray(p, np.float64)
    return np.log(p) - np.log1p(-p)


# -- the model and its maths ------------------------------------------------------------------------
@pytest.mark.parametrize("combiner", contract.ENSEMBLE_COMBINERS)
def test_each_combiner_is_its_numpy_formula(combiner):
    from medfake.models import ensemble as ens

    members = [tiny_detector(seed) for seed in (1, 2, 3)]
    x = hu_batch()
    probabilities = np.column_stack([m.predict_on_batch(x).reshape(-1) for m in members]).astype(np.float64)
    assert probabilities.std() > 1e-3  # the members disagree, so the combiners differ
    weights, bias = np.array([0.7, -1.2, 2.0]), 0.25
    model = ens.build_ensemble(members, ["VGG19", "VGG19", "DenseNet121"], combiner,
                               *((weights, bias) if combiner == "stacking" else (None, None)))
    got = model.predict_on_batch(x).reshape(-1)
    expected = {
        "mean": probabilities.mean(axis=1),
        "logit-mean": 1 / (1 + np.exp(-logit(probabilities).mean(axis=1))),
        "stacking": 1 / (1 + np.exp(-(logit(probabilities) @ weights + bias))),
    }[combiner]
    np.testing.assert_allclose(got, expected, atol=2e-6)
    # the step's numpy reference from the member logits agrees with the Keras model too
    logits = np.column_stack([m.predict_on_batch(x).reshape(-1) for m in ens.member_logit_models(model)])
    np.testing.assert_allclose(cmp.combine(logits, combiner, weights, bias), got, atol=2e-6)
    np.testing.assert_allclose(cmp.sigmoid(logits), probabilities, atol=1e-6)


def test_members_are_renamed_and_the_model_round_trips(tmp_path):
    import keras

    from medfake.models import ensemble as ens

    members = [tiny_detector(1), tiny_detector(2)]  # same model name twice, same inner layer names
    model = ens.build_ensemble(members, ["MobileNetV3Large", "MobileNetV3Large"], "stacking", [1.0, 0.5], -0.1)
    names = [layer.name for layer in model.layers]
    assert names[:3] == ["hu", "member_1_mobilenetv3large", "member_2_mobilenetv3large"]
    assert len(set(names)) == len(names) and model.get_layer("probability").trainable is False
    assert all(layer.__class__.__module__.startswith("keras") for layer in model.layers)  # built-ins only
    model.save(tmp_path / "ensemble.keras")
    loaded = keras.saving.load_model(tmp_path / "ensemble.keras", compile=False)
    x = hu_batch(4)
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-7)
    with pytest.raises(UserError, match="at least 2 members"):
        ens.build_ensemble(members[:1], ["VGG19"], "mean")
    with pytest.raises(UserError, match="different input shapes"):
        ens.build_ensemble([tiny_detector(1), tiny_detector(2, size=SIZE + 2)], ["a", "b"], "mean")
    with pytest.raises(UserError, match="--combiner must be one of"):
        ens.build_ensemble(members, ["a", "b"], "median")


def test_stacking_is_a_logistic_regression_of_the_labels_on_the_logits():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    labels = np.arange(60) % 2
    logits = np.column_stack([labels * 2.0 + rng.normal(0, 1, 60), labels * 0.5 + rng.normal(0, 1, 60)])
    weights, bias = cmp.fit_stacking(logits, labels)
    reference = LogisticRegression(C=1.0, max_iter=1000).fit(logits, labels)
    np.testing.assert_allclose(weights, reference.coef_[0])
    assert bias == pytest.approx(reference.intercept_[0])
    assert weights[0] > weights[1] > 0  # the more informative member weighs more
    np.testing.assert_allclose(cmp.combine(logits, "stacking", weights, bias), reference.predict_proba(logits)[:, 1])
    with pytest.raises(UserError, match="both classes"):
        cmp.fit_stacking(logits, np.zeros(60))


def test_comparison_with_the_best_member():
    rng = np.random.default_rng(0)
    labels = np.arange(80) % 2
    good = np.clip(labels * 0.5 + rng.uniform(0, 0.5, 80), 0, 1)
    weak = np.clip(labels * 0.1 + rng.uniform(0, 0.9, 80), 0, 1)
    members = np.column_stack([weak, good])
    ensemble = (weak + good) / 2
    result = cmp.compare_with_best(labels, ensemble, members, ["Weak", "Good"], ["r1", "r2"], 0.5)
    assert (result.best_model, result.best_run_id) == ("Good", "r2")
    auc_e, auc_b, _, p = mt.delong_auc_test(labels, ensemble, good)
    assert result.delta == pytest.approx(auc_e - auc_b) and result.delong_p == pytest.approx(p)
    assert result.mcnemar_p == pytest.approx(mt.mcnemar(labels, mt.predict_labels(ensemble), mt.predict_labels(good))[1])
    keys = result.metrics()
    assert set(keys) == {"test_auc_delta_vs_best_member", "test_delong_p_vs_best_member",
                         "test_mcnemar_p_vs_best_member"}
    same = cmp.compare_with_best(labels, good, members, ["Weak", "Good"], ["r1", "r2"], 0.5)
    assert same.delta == 0 and same.delong_p == 1.0 and not same.better


@pytest.mark.parametrize("delta, p, starts", [
    (0.05, 0.01, "Better: test AUC +0.0500 over the best member X"),
    (0.01, 0.40, "Not better: test AUC +0.0100 over the best member X, within chance"),
    (-0.02, 0.30, "Not better: test AUC -0.0200 against the best member X"),
    (0.0, 1.0, "Not better"),
    (float("nan"), float("nan"), "Not compared"),
])
def test_verdict_says_plainly_when_it_is_not_better(delta, p, starts):
    assert cmp.verdict_sentence(delta, p, 0.5, "X").startswith(starts)


@pytest.mark.slow
def test_speed_beside_the_members_on_keras_and_the_fastest_runtime():
    from medfake.models import ensemble as ens
    from medfake.models.runtime import available_runtimes

    members = [tiny_detector(1), tiny_detector(2)]
    model = ens.build_ensemble(members, ["A", "B"], "logit-mean")
    speed = cmp.measure(model, members, hu_batch(8), 3, "auto")
    fastest = available_runtimes()[0]
    assert len(speed.keras) == 3 and all(mean > 0 for mean, _ in speed.keras)
    assert speed.runtime == ("" if fastest == "keras" else fastest)
    if speed.runtime:
        assert len(speed.fast) == 3 and set(speed.runtime_metrics()) == {f"{fastest}_latency_ms_mean",
                                                                         f"{fastest}_latency_ms_std"}
    labels = np.arange(8) % 2
    scores = np.column_stack([m.predict_on_batch(hu_batch(8)).reshape(-1) for m in members])
    table = cmp.efficiency_table("ens", ["A", "B"], ["r1", "r2"], labels, scores.mean(axis=1), scores,
                                 [model, *members], speed, 0.5)
    assert table["model"].tolist() == ["ens", "A", "B"] and table["run_id"].tolist() == ["", "r1", "r2"]
    assert table.loc[1, "test_auc"] == pytest.approx(mt.rank_auc(labels, scores[:, 0]))
    metrics = cmp.member_metrics(table)
    assert metrics["member_2_params_m"] == pytest.approx(members[1].count_params() / 1e6)
    assert metrics["member_1_latency_ms_mean"] == speed.keras[1][0] and not any(k.startswith("member_0") for k in metrics)


# -- choosing the members (fake runs, no training) --------------------------------------------------
def test_members_must_share_data_and_size(tracking_store, capsys):
    cfg = base_config("medfake-test")
    a = fake_run("VGG19", data_digest="a" * 16, experiment="medfake-test")
    b = fake_run("DenseNet121", data_digest="b" * 16, experiment="medfake-test")
    c = fake_run("Xception", data_digest="a" * 16, cfg=cfg.replace(**{"data.image_size": 160}), experiment="medfake-test")
    base = fake_run("baseline", data_digest="a" * 16, experiment="medfake-test", metrics=full_metrics("VGG19"))
    for runs, messages in (
        ((a, b), ["members differ in data digest:", f"VGG19 ({a}) has {'a' * 16}", f"DenseNet121 ({b}) has {'b' * 16}"]),
        ((a, c), ["members differ in input size:", f"VGG19 ({a}) takes {cfg.data.image_size} px",
                  f"Xception ({c}) takes 160 px"]),
        ((a, base), [f"run {base} is the HU-histogram baseline"]),
        ((a, "0" * 32), [f"no run {'0' * 32}"]),
        ((a,), ["an ensemble needs at least 2 ranked detectors, found 1 (VGG19)"]),
    ):
        assert main(["ensemble", "--config", "quickstart", "--set", "experiment=medfake-test",
                     "--runs", ",".join(runs)]) == 2
        err = capsys.readouterr().err.strip()
        assert all(message in err for message in messages), err
        assert err.startswith("medfake ensemble: error: ") and "\n" not in err
    assert main(["ensemble", "--runs", f"{a},{a}"]) == 2
    assert "names a run twice" in capsys.readouterr().err
    assert main(["ensemble", "--runs", f"{a},{b}", "--combiner", "median"]) == 2
    assert main(["ensemble", "--runs", f"{a},{b}", "--top-k", "1"]) == 2
    import mlflow

    assert not mlflow.search_runs(search_all_experiments=True, filter_string="attributes.status = 'RUNNING'").shape[0]


def test_top_members_follow_select_ranking(tracking_store):
    from mlflow.tracking import MlflowClient

    ids = {model: fake_run(model, experiment="medfake-test", metrics=full_metrics(model if model != "baseline" else "VGG19"))
           for model in ("VGG19", "DenseNet121", "Xception", "ResNet50V2", "baseline")}
    runs = [MlflowClient().get_run(run_id) for run_id in ids.values()]
    members = step.top_members(runs, "val", 3)
    ranking = step.rank_models(runs, "val", 3)
    expected = [entry.model for entry in ranking.ranked if entry.model != "baseline"][:3]
    assert [step.model_of(run) for run in members] == expected
    assert step.check_members(members) == ("d" * 16, base_config().data.image_size)


def fake_study():
    """Fake screen runs (DenseNet121, ResNet50V2), a select run over them, and a finished `mean` ensemble
    of both that loses to its best member by 0.01 AUC; returns (select run id, ensemble run id, label)."""
    import mlflow

    from medfake.study import select as sel
    from medfake.study.launcher import Launcher
    from study_fakes import EXPERIMENT, FakeLauncher, fake_predictions

    ids = [fake_run(model, predictions=fake_predictions(i)) for i, model in enumerate(("DenseNet121", "ResNet50V2"))]
    select_run_id = sel.select(Launcher(EXPERIMENT, launch=FakeLauncher(), say=lambda m: None),
                               sel.SelectOptions("val", 2, 0)).select_run_id
    client = mlflow.MlflowClient()
    label = "ensemble-mean:ResNet50V2+DenseNet121"
    tags = {contract.TAG_STAGE: contract.STAGE_ENSEMBLE, contract.TAG_DATA_DIGEST: "d" * 16, contract.TAG_MODEL: label,
            contract.TAG_ENSEMBLE_MEMBERS: f"{ids[1]},{ids[0]}", contract.TAG_ENSEMBLE_BEST_MEMBER: ids[1],
            contract.TAG_DEVICE: "cpu: test (2 cores)"}
    run_id = client.create_run(client.get_experiment_by_name(EXPERIMENT).experiment_id, run_name="Ensemble-mean-k2-s42",
                               tags=tags).info.run_id
    metrics = {"test_auc": 0.9512, "test_auc_ci_low": 0.93, "test_auc_ci_high": 0.97, "test_accuracy": 0.9,
               "test_precision": 0.9, "test_recall": 0.9, "test_specificity": 0.9, "test_f1": 0.9, "test_h": 0.9,
               "test_auc_delta_vs_best_member": -0.01, "test_delong_p_vs_best_member": 0.42,
               "test_mcnemar_p_vs_best_member": 0.8, "params_m": 31.5, "latency_ms_mean": 44.0, "latency_ms_std": 2.0}
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    client.log_param(run_id, "combiner", "mean")
    client.set_terminated(run_id)
    return select_run_id, run_id, label


def test_report_adds_the_ensemble_row_and_says_when_it_is_not_better(project):
    from medfake.study import report
    from study_fakes import EXPERIMENT

    _, _, label = fake_study()
    text = report.render(EXPERIMENT, project / "out", "d" * 16).read_text()
    assert f"| {label} | ours | 0.9000 |" in text  # Table 1: ours, no study row
    assert f"| {label} | 31.50 | — | 44.0 ± 2.0 | — |" in text  # Table 3
    assert (f"- **{label}**: Not better: test AUC -0.0100 against the best member ResNet50V2 "
            "(DeLong p = 0.42, McNemar p = 0.8).") in text
    table1 = pd.read_csv(project / "out" / "tables" / "table1.csv")
    assert table1.loc[table1["model"] == label, "auc_ci_low"].item() == 0.93


def test_paper_runs_the_ensemble_when_configured_and_reuses_a_finished_one(project):
    from study_fakes import EXPERIMENT

    select_run_id, run_id, _ = fake_study()
    said = []
    cfg = base_config(EXPERIMENT)
    assert step.paper_ensemble(cfg, select_run_id, said.append) is None and not said  # study.ensemble: false
    on = cfg.replace(**{"study.ensemble": True, "study.ensemble_top_k": 2})
    assert step.paper_ensemble(on, select_run_id, said.append) == run_id  # same members (select's order), combiner
    assert said == [f"ensemble: reusing finished ensemble run {run_id} (mean of 2 members)"]
    assert step.paper_ensemble(on.replace(**{"study.ensemble_top_k": 1}), select_run_id, said.append) is None
    assert said[-1] == "ensemble: skipped (an ensemble needs at least 2 ranked detectors, found 1 (ResNet50V2))"


# -- the whole step on two trained detectors --------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny detectors (MobileNetV3Large, VGG19) trained by the train step, and a select run over them."""
    import mlflow

    from medfake.core.config import load_config
    from medfake.data.preprocess import cache_path
    from medfake.training.train import resolve_plan, train

    folder = tmp_path_factory.mktemp("ensemble")
    with pytest.MonkeyPatch.context() as patch:
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        patch.chdir(folder)
        for name in ("MLproject", "conda.yaml"):
            shutil.copy(Path(__file__).resolve().parents[2] / name, folder / name)
        mlflow.set_tracking_uri(uri)
        cfg = load_config("quickstart", TINY)
        dataset = tiny_dataset(cache_path(cfg, "c" * 16))
        runs = {model: train(resolve_plan(model, cfg, "screen"), data_digest=dataset.digest, progress=False)
                for model in ("MobileNetV3Large", "VGG19")}
        assert main(["select", "--config", "quickstart", "--set", " ".join(TINY), "--top-k", "2", "--repeats", "0",
                     "--quiet"]) == 0
        yield {"folder": folder, "uri": uri, "cfg": cfg, "dataset": dataset, "runs": runs, "patch": patch}


def _ensemble_cli(*extra):
    return main(["ensemble", "--config", "quickstart", "--set", " ".join(TINY), "--latency-runtime", "keras",
                 "--quiet", *extra])


def _newest_ensemble():
    import mlflow

    runs = mlflow.search_runs(experiment_names=["medfake-test"], output_format="list",
                              filter_string=f"tags.`{contract.TAG_STAGE}` = '{contract.STAGE_ENSEMBLE}'",
                              order_by=["attributes.start_time DESC"])
    return runs[0]


@pytest.mark.slow
def test_stacking_ensemble_from_select_logs_a_train_like_run(trained, artifact):
    assert _ensemble_cli("--data-digest", "c" * 16, "--combiner", "stacking") == 0
    run = _newest_ensemble()
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    assert run.info.status == "FINISHED" and tags[contract.TAG_STAGE] == "ensemble"
    ranked = step.top_members(step.get_runs(list(trained["runs"].values())), "val", 2)
    assert tags[contract.TAG_ENSEMBLE_MEMBERS] == ",".join(r.info.run_id for r in ranked)  # select's H order
    assert tags[contract.TAG_ENSEMBLE_SELECT_RUN] and tags[contract.TAG_DATA_DIGEST] == "c" * 16
    assert tags[contract.TAG_ENSEMBLE_BEST_MEMBER] in trained["runs"].values()
    assert params["combiner"] == "stacking" and params["model"].startswith("ensemble-stacking:")
    for split in contract.SPLITS:
        assert {f"{split}_{name}" for name in contract.METRICS} <= set(metrics)
    assert {"test_auc_ci_low", "test_h_ci_high", "test_recall_fm", "test_fpr_tb", "test_ece", "test_tp"} <= set(metrics)
    assert {"test_auc_delta_vs_best_member", "test_mcnemar_p_vs_best_member", "params_m", "latency_ms_mean",
            "member_1_params_m", "member_2_latency_ms_mean", "member_1_test_auc"} <= set(metrics)
    # the members' parameters plus one logit copy of each output layer and the stacking layer
    assert metrics["params_m"] == pytest.approx(metrics["member_1_params_m"] + metrics["member_2_params_m"], abs=1e-4)
    best_auc = max(metrics["member_1_test_auc"], metrics["member_2_test_auc"])
    assert metrics["test_auc_delta_vs_best_member"] == pytest.approx(metrics["test_auc"] - best_auc, abs=1e-9)
    # the logged scores are the stacking formula over the members' own logged test scores
    stacking = json.loads(artifact(run.info.run_id, "ensemble/stacking.json").read_text())
    assert stacking["fitted_on"] == "val" and stacking["val_slices"] == 12
    ours = pd.read_csv(artifact(run.info.run_id, "predictions/test.csv"))
    theirs = [pd.read_csv(artifact(r.info.run_id, "predictions/test.csv")) for r in ranked]
    logits = np.column_stack([logit(frame["score"].clip(1e-9, 1 - 1e-9)) for frame in theirs])
    np.testing.assert_allclose(ours["score"], cmp.combine(logits, "stacking", stacking["weights"], stacking["bias"]),
                               atol=1e-4)
    assert list(ours.columns) == list(contract.PREDICTION_COLUMNS)
    members = pd.read_csv(artifact(run.info.run_id, "ensemble/members.csv"))
    assert members["model"].tolist()[1:] == [step.model_of(r) for r in ranked]
    assert artifact(run.info.run_id, "ensemble/comparison.md").read_text().startswith(("Better", "Not better"))
    # promote takes it as a candidate like any run with a model and val_h
    from mlflow.tracking import MlflowClient

    from medfake.registry import promote

    candidates, _ = promote.collect_candidates(MlflowClient(), "medfake-test", "val_h")
    assert run.info.run_id in {c.run_id for c in candidates}


@pytest.mark.slow
def test_stacking_never_sees_test_labels(trained, tmp_path, monkeypatch):
    """Spy on the fit, then corrupt every test label: the fitted weights do not move, the test metrics do."""
    ids = ",".join(trained["runs"].values())
    seen = []
    fit = step.fit_stacking
    monkeypatch.setattr(step, "fit_stacking", lambda logits, labels: seen.append((logits, labels)) or fit(logits, labels))
    assert _ensemble_cli("--runs", ids, "--combiner", "stacking") == 0
    clean = _newest_ensemble()
    manifest = trained["dataset"].manifest
    val = manifest[manifest["split"] == "val"]
    (logits, labels), = seen
    assert logits.shape == (len(val), 2) and np.array_equal(labels, val["label"].to_numpy())

    corrupted = tmp_path / "corrupted" / ("c" * 16)
    shutil.copytree(trained["dataset"].path, corrupted)
    frame = pd.read_csv(corrupted / "manifest.csv", dtype=str, keep_default_na=False)
    test = frame["split"] == "test"
    frame.loc[test, "label"] = (1 - frame.loc[test, "label"].astype(int)).astype(str)
    frame.to_csv(corrupted / "manifest.csv", index=False)
    assert _ensemble_cli("--runs", ids, "--combiner", "stacking", "--set", f"data.cache_dir={corrupted.parent}") == 0
    flipped = _newest_ensemble()
    assert flipped.info.run_id != clean.info.run_id
    assert flipped.data.params["stacking_weights"] == clean.data.params["stacking_weights"]
    assert flipped.data.params["stacking_bias"] == clean.data.params["stacking_bias"]
    assert flipped.data.metrics["test_auc"] == pytest.approx(1 - clean.data.metrics["test_auc"])
    assert flipped.data.metrics["val_auc"] == clean.data.metrics["val_auc"]


@pytest.mark.slow
def test_served_and_scanned_like_a_single_detector(trained, tmp_path, capsys):
    """`mlflow models serve` answers the ensemble's probabilities; `medfake scan --model RUN` scans a series."""

    from medfake.inference import serving

    assert _ensemble_cli("--runs", ",".join(trained["runs"].values()), "--combiner", "logit-mean") == 0
    run_id = _newest_ensemble().info.run_id
    local = logged_models.load_keras(f"runs:/{run_id}/model")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow_exe = Path(sys.executable).parent / "mlflow"
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [str(mlflow_exe), "models", "serve", "-m", f"runs:/{run_id}/model", "--env-manager", "local", "-p", str(port),
         "-h", "127.0.0.1", "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT,
        # TMPDIR: the server's copy of the model goes with the test's folder when it is killed
        env={**os.environ, "TMPDIR": str(tmp_path),
             "PATH": os.pathsep.join([str(mlflow_exe.parent), os.environ.get("PATH", "")])},
    )
    try:
        serving.wait_until_ready(url, timeout_s=120, alive=lambda: server.poll() is None)
        batch = hu_batch(3, size=32)
        remote = serving.score(url, batch, timeout=60)
        np.testing.assert_allclose(remote, local.predict_on_batch(batch).reshape(-1), atol=1e-5)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    series = tmp_path / "series"
    write_series(series, phantom_volume(n=6, size=32, seed=2))
    reports = {}
    for runtime in ("auto", "keras"):  # auto: exported to the fastest installed runtime (OpenVINO/ONNX)
        out = tmp_path / f"scan-{runtime}.json"
        assert main(["scan", str(series), "--model", run_id, "--runtime", runtime, "--json", str(out), "--quiet"]) == 0
        reports[runtime] = json.loads(out.read_text())["series"][0]
    scores = {runtime: np.array([row["score"] for row in report["scores"]]) for runtime, report in reports.items()}
    assert scores["keras"].shape == (6,) and np.all((scores["keras"] >= 0) & (scores["keras"] <= 1))
    np.testing.assert_allclose(scores["auto"], scores["keras"], atol=1e-4)
