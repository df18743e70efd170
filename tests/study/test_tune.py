"""The tune step: search-space checks, storage, the tuned override file, a real tiny search with a
pruned and a resumed trial, and two worker processes sharing one journal."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from medfake.core import config as config_module
from medfake.core.config import load_config
from medfake.core.errors import UserError
from tiny_data import TINY, tiny_dataset

MODEL = "MobileNetV3Large"
#: One epoch, phase 1 only: a trial is the real train step at its smallest.
ONE_EPOCH = [*TINY, "train.phase1_epochs=1", "train.phase2_epochs=0"]
SPACE = """
objective: {metric: val_auc, direction: maximize}
trials: 2
sampler: {type: tpe, seed: 3}
pruner: PRUNER
space:
  train.phase1_lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  model.dropout: {type: float, low: 0.0, high: 0.3}
  model.head_units: {type: categorical, choices: [[16, 8], [32, 8]]}
  data.window.center: {type: float, low: -700.0, high: -500.0}
"""
NO_PRUNING = "{type: median, n_startup_trials: 10, n_warmup_steps: 0}"
#: val_auc can never reach 1.01: the pruner stops the trial at its first reported epoch.
PRUNE_ALL = "{type: threshold, lower: 1.01, n_warmup_steps: 0}"


def write_space(folder: Path, pruner: str = NO_PRUNING, text: str = SPACE, name: str = "space.yaml") -> Path:
    path = folder / name
    path.write_text(text.replace("PRUNER", pruner))
    return path


def sets(items) -> list[str]:
    return sum((["--set", item] for item in items), [])


@pytest.fixture
def experiments_dir(tmp_path, monkeypatch) -> Path:
    """A private experiments/ folder (base + quickstart), so tuned files never land in the repo."""
    folder = tmp_path / "experiments"
    folder.mkdir()
    for name in ("base.yaml", "quickstart.yaml", "tune.yaml"):
        shutil.copy(config_module.EXPERIMENTS_DIR / name, folder / name)
    monkeypatch.setattr(config_module, "EXPERIMENTS_DIR", folder)
    return folder


# -- the search space -----------------------------------------------------------------------
def test_default_space_is_valid_for_the_shipped_experiments():
    from medfake.study.tune_space import check_space, load_spec

    spec = load_spec(config_module.EXPERIMENTS_DIR / "tune.yaml")
    assert (spec.metric, spec.direction, spec.pruner, spec.pruner_metric) == ("val_auc", "maximize", "median", "val_auc")
    keys = {p.key for p in spec.params}
    assert {"train.phase1_lr", "train.phase2_lr", "train.batch_size", "model.head_units", "model.dropout",
            "data.window.center", "data.window.width", "train.phase2_epochs", "train.unfreeze"} <= keys
    for name in ("quickstart", "paper"):
        check_space(spec, load_config(name))
    # --objective picks the metric and its natural direction; the pruner signal follows.
    loss = load_spec(config_module.EXPERIMENTS_DIR / "tune.yaml", objective="val_loss")
    assert (loss.direction, loss.pruner_metric) == ("minimize", "val_loss")


def test_list_choices_round_trip_through_optuna():
    import optuna

    from medfake.study.tune_space import CategoricalParam

    param = CategoricalParam("model.head_units", ([512, 256], [1024, 256]))
    trial = optuna.trial.FixedTrial({"model.head_units": "[1024, 256]"})
    assert param.suggest(trial) == [1024, 256]
    assert load_config("quickstart").replace(**{"model.head_units": [1024, 256]}).model.head_units == (1024, 256)


BAD_SPACES = {
    "unknown type": ("  train.phase1_lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}",
                     "  train.phase1_lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}", "unknown type 'loguniform'"),
    "low above high": ("  model.dropout: {type: float, low: 0.0, high: 0.3}",
                       "  model.dropout: {type: float, low: 0.5, high: 0.1}", "low 0.5 > high 0.1"),
    "unknown config key": ("  model.dropout:", "  model.drop_out:", "unknown config key 'model.drop_out'"),
    "objective not logged": ("metric: val_auc", "metric: val_roc", "'val_roc' is not logged by the train step"),
    "loss maximised": ("{metric: val_auc, direction: maximize}", "{metric: val_loss, direction: maximize}",
                       "should be minimized"),
    "dataset key": ("  model.dropout: {type: float, low: 0.0, high: 0.3}",
                    "  data.image_size: {type: int, low: 32, high: 64}", "cannot be searched"),
    "float on an integer key": ("  model.dropout: {type: float, low: 0.0, high: 0.3}",
                                "  train.batch_size: {type: float, low: 8, high: 32}", "use type: int"),
    "choice the config refuses": ("  model.dropout: {type: float, low: 0.0, high: 0.3}",
                                  "  train.precision: {type: categorical, choices: [float32, float64]}",
                                  "'float64' is not one of"),
    "log scale through zero": ("low: 1.0e-4, high: 1.0e-2, log: true", "low: 0.0, high: 1.0e-2, log: true",
                               "log: true needs low > 0"),
    "pruner argument": ("pruner: PRUNER", "pruner: {type: median, n_startup_trial: 3}", "pruner median"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_bad_search_space_is_one_line_before_any_trial(case, tmp_path, tracking_store, capsys):
    import mlflow

    from medfake.cli import main

    old, new, message = BAD_SPACES[case]
    assert old in SPACE
    space = write_space(tmp_path, text=SPACE.replace(old, new))
    code = main(["tune", "--model", MODEL, "--space", str(space), "--quiet", *sets(ONE_EPOCH)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert message in err[0] and str(space) in err[0], err[0]
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []
    assert not (tmp_path / "optuna.journal").exists()  # no study was even opened


def test_bad_options_are_one_line_before_any_trial(tmp_path, tracking_store, capsys):
    import mlflow

    from medfake.cli import main

    space = write_space(tmp_path)
    (tmp_path / "a_file").write_text("")
    cases = {
        "sqlite:////no/such/folder/optuna.db": "cannot be reached or opened",
        # Unreachable port, and the driver is not even installed here: either way one line, no password.
        "postgresql://medfake:s3cret@127.0.0.1:1/optuna": "cannot be reached or opened",
        str(tmp_path / "a_file" / "optuna.journal"): "cannot create folder",
        str(tmp_path): "is a folder",
    }
    for storage, message in cases.items():
        code = main(["tune", "--model", MODEL, "--space", str(space), "--storage", storage, *sets(ONE_EPOCH)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], (storage, err)
        assert "s3cret" not in err[0]
    for extra, message in ((["--objective", "test_silhouette"], "not logged by the train step"),
                           (["--trials", "0"], "--trials must be at least 1"),
                           (["--model", "baseline"], "baseline has none"),
                           (["--model", "resnet9000"], "Xception")):
        code = main(["tune", "--model", MODEL, "--space", str(space), *extra, *sets(ONE_EPOCH)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], (extra, err)
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


def test_default_storage_is_beside_the_tracking_store(tmp_path):
    from medfake.study.tune_storage import default_storage_path

    assert default_storage_path(f"sqlite:///{tmp_path}/store/mlflow.db") == tmp_path / "store" / "optuna.journal"
    assert default_storage_path("sqlite:///mlflow.db") == Path("optuna.journal")
    assert default_storage_path(f"file://{tmp_path}/mlruns") == tmp_path / "optuna.journal"
    assert default_storage_path("http://tracking:5000") == Path(".medfake") / "optuna.journal"


def test_dataset_digest_ignores_the_window(tmp_path):
    """The window is applied inside the detector, so tuning it must not rebuild the dataset."""
    from medfake.data.preprocess import Inputs, dataset_digest

    (tmp_path / "ctgan").mkdir()
    inputs = Inputs(tmp_path / "ctgan", None)
    cfg = load_config("quickstart")
    same = dataset_digest(cfg.replace(**{"data.window.center": -400.0, "data.window.width": 900.0}), inputs)
    assert same == dataset_digest(cfg, inputs)
    assert dataset_digest(cfg.replace(**{"data.image_size": 64}), inputs) != dataset_digest(cfg, inputs)


def test_tuned_file_is_an_override_file_train_accepts(experiments_dir):
    from medfake.study.tune import tuned_overrides, write_tuned_config

    values = {"train.phase1_lr": 0.00123, "model.head_units": [1024, 256], "data.window.center": -512.5,
              "train.unfreeze": "0.25"}
    data = tuned_overrides("quickstart", ["train.batch_size=32", "eval.bootstrap_samples=7"], values)
    write_tuned_config(experiments_dir / "tuned-xception.yaml", data, ["Tuned by a test."])
    tuned = load_config("tuned-xception")
    expected = load_config("quickstart", ["train.batch_size=32", "eval.bootstrap_samples=7"]).replace(**values)
    assert tuned == expected
    quickstart, base = load_config("quickstart"), load_config("base")
    assert tuned.data.phantom == quickstart.data.phantom != base.data.phantom  # the experiment's overrides kept
    assert (experiments_dir / "tuned-xception.yaml").read_text().startswith("# Tuned by a test.")


def test_joining_a_study_made_for_another_setup_is_refused(tmp_path):
    from medfake.training.train import resolve_plan
    from medfake.study.tune_space import load_spec
    from medfake.study.tune_storage import Search, open_storage, open_study

    storage, shown = open_storage(str(tmp_path / "optuna.journal"))
    plan = resolve_plan(MODEL, load_config("quickstart", ONE_EPOCH), "tune")
    space = write_space(tmp_path)
    first = Search(load_spec(space), plan, "d" * 16, "shared", shown, progress=False)
    study = open_study(first, storage)
    assert study.user_attrs["medfake"]["objective"] == "val_auc"
    assert open_study(first, storage).study_name == "shared"  # the same setup joins
    other = Search(load_spec(space, objective="val_h"), plan, "d" * 16, "shared", shown, progress=False)
    with pytest.raises(UserError, match="another objective"):
        open_study(other, storage)


def quick_train(interrupt_on_call: int | None = None):
    """A stand-in for ``train.train`` with its contract (a nested run, ``on_epoch`` after each epoch,
    ``val_auc`` logged) and no training: val_auc rises with the learning rate."""
    calls = []

    def fake_train(plan, data_digest=None, resume=None, parent=None, progress=True, *, nested=False,
                   extra_tags=None, on_epoch=None):
        import math

        import mlflow

        from medfake.core import tracking

        calls.append(plan.run_name)
        with tracking.run(plan.cfg.experiment, plan.run_name, plan.stage, tags=extra_tags, nested=nested) as run:
            auc = 0.5 + 0.1 * math.log10(plan.cfg.train.phase1_lr / 1e-4)
            for epoch in range(plan.cfg.train.phase1_epochs):
                if len(calls) == interrupt_on_call:
                    raise KeyboardInterrupt
                mlflow.log_metric("phase1_val_auc", auc, step=epoch)
                on_epoch(1, epoch, {"loss": 0.5, "val_loss": 0.5, "val_auc": auc})
            mlflow.log_metric("val_auc", auc)
            return run.info.run_id

    return fake_train


def test_median_pruner_and_an_interrupted_search_resumed(tmp_path, tracking_store, experiments_dir, monkeypatch):
    """Ctrl-C in trial 2 ends its run and the parent KILLED; rerunning reaches the target; the
    default median pruner stops trials below the median of the finished ones at the same epoch."""
    import mlflow
    import numpy as np
    import optuna
    from optuna.trial import TrialState

    from medfake.training import train as train_module
    from medfake.cli import main
    from medfake.data.preprocess import cache_path

    settings = [*ONE_EPOCH, "train.phase1_epochs=2"]
    dataset = tiny_dataset(cache_path(load_config("quickstart", settings), "d" * 16))
    space = write_space(tmp_path, "{type: median, n_startup_trials: 2, n_warmup_steps: 0}")
    args = ["tune", "--model", MODEL, "--study", "median", "--trials", "6", "--space", str(space),
            "--data", dataset.digest, "--quiet", *sets(settings)]
    monkeypatch.setattr(train_module, "train", quick_train(interrupt_on_call=3))
    assert main(args) == 130
    runs = mlflow.search_runs(experiment_names=["medfake-test"], output_format="list")
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1 and parent[0].info.status == "KILLED"
    interrupted = [r for r in runs if r.data.tags.get("medfake.trial") == "2"]
    assert len(interrupted) == 1 and interrupted[0].info.status == "KILLED"
    assert interrupted[0].data.tags["medfake.pruned"] == "false"

    monkeypatch.setattr(train_module, "train", quick_train())
    assert main(args) == 0
    study = optuna.load_study(study_name="median", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna.journal"))))
    trials = study.get_trials()
    assert trials[2].state == TrialState.FAIL  # the interrupted one, not counted
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 6 == len(trials) - 1
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "seed 3 proposes learning rates of which some fall below the median"
    for trial in pruned:
        earlier = [t.intermediate_values[0] for t in trials if t.state == TrialState.COMPLETE and t.number < trial.number]
        assert list(trial.intermediate_values) == [0] and trial.intermediate_values[0] < np.median(earlier)
        run = mlflow.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "KILLED" and run.data.tags["medfake.pruned"] == "true"


# -- end to end ------------------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_search_prunes_and_resumes(tmp_path, tracking_store, experiments_dir, monkeypatch, capsys):
    """3 trials of the real train step (1 epoch): 2, then a resumed run adds a pruned third."""
    import mlflow
    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    from medfake.cli import main
    from medfake.data.preprocess import cache_path
    from medfake.training.train import CHECKPOINT_ROOT, resolve_plan

    monkeypatch.setenv("MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT", "2")  # pip inference: 20 s a model on busy cores
    dataset = tiny_dataset(cache_path(load_config("quickstart", ONE_EPOCH), "d" * 16))
    args = ["tune", "--model", MODEL, "--study", "tiny", "--data", dataset.digest, "--quiet", *sets(ONE_EPOCH)]
    assert main([*args, "--trials", "2", "--space", str(write_space(tmp_path))]) == 0
    first = capsys.readouterr().out
    assert "2 complete, 0 pruned" in first
    resumed = write_space(tmp_path, PRUNE_ALL, name="prune.yaml")
    assert main([*args, "--trials", "3", "--space", str(resumed)]) == 0
    out = capsys.readouterr().out
    assert "3 trials: 2 complete, 1 pruned" in out and "PRUNED" in out and "best: trial" in out

    # Optuna: one study, three trials, the third pruned by the pruner at its first epoch.
    journal = tmp_path / "optuna.journal"  # beside mlflow.db
    study = optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert list(trials[2].intermediate_values) == [0]

    # MLflow: two parent runs, one child run per trial with the trial's params and metrics.
    client = MlflowClient()
    runs = mlflow.search_runs(experiment_names=["medfake-test"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {int(r.data.tags["medfake.trial"]): r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    assert sorted(children) == [0, 1, 2] and len(runs) == 5
    parent_ids = {p.info.run_id for p in parents}
    for trial in trials:
        run = children[trial.number]
        assert run.data.tags["medfake.stage"] == "tune" and run.data.tags["mlflow.parentRunId"] in parent_ids
        assert run.data.tags["medfake.study"] == "tiny"
        assert run.info.run_id == trial.user_attrs["mlflow_run_id"]
        for key, value in trial.params.items():
            assert run.data.params[key] == str(value), key
        assert not (tmp_path / CHECKPOINT_ROOT / run.info.run_id).exists()
    for number in (0, 1):
        done = children[number]
        assert done.info.status == "FINISHED" and done.data.tags["medfake.pruned"] == "false"
        assert done.data.metrics["val_auc"] == pytest.approx(trials[number].value)
        assert "test_auc" in done.data.metrics
    pruned = children[2]
    assert pruned.info.status == "KILLED" and pruned.data.tags["medfake.pruned"] == "true"
    assert "medfake.failure" not in pruned.data.tags and "test_auc" not in pruned.data.metrics
    assert [m.step for m in client.get_metric_history(pruned.info.run_id, "phase1_val_auc")] == [0]

    # The resumed run's parent logs the whole study: plots, table, counts, the tuned file.
    last = max(parents, key=lambda r: r.info.start_time)
    assert last.data.metrics["trials_complete"] == 2 and last.data.metrics["trials_pruned"] == 1
    assert last.data.metrics["best_val_auc"] == pytest.approx(study.best_value)
    assert last.data.tags["medfake.best_trial"] == str(study.best_trial.number)
    assert last.data.params["tune.pruner"] == "threshold" and last.data.params["tune.study"] == "tiny"
    plots = {a.path for a in client.list_artifacts(last.info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/slice.png", "plots/intermediate_values.png"} <= plots
    top = {a.path for a in client.list_artifacts(last.info.run_id)}
    assert {"trials.csv", "tuned-mobilenetv3large.yaml", "prune.yaml"} <= top

    # `medfake train --config tuned-mobilenetv3large` reproduces the best trial's config exactly.
    tuned = resolve_plan(MODEL, load_config("tuned-mobilenetv3large"), "screen").cfg
    best_run = children[study.best_trial.number]
    assert tuned.digest() == best_run.data.tags["medfake.config_digest"]
    assert tuned.train.phase1_lr == study.best_trial.params["train.phase1_lr"]


FAKE_TRAIN = '''
"""Run `medfake tune` with a stand-in for the train step: the test is about the shared journal."""
import math, sys, time
from pathlib import Path

import medfake.training.train as train_module

BARRIER = Path(sys.argv.pop(1))


def fake_train(plan, data_digest=None, resume=None, parent=None, progress=True, *, nested=False,
               extra_tags=None, on_epoch=None):
    import mlflow
    from medfake.core import tracking

    with tracking.run(plan.cfg.experiment, plan.run_name, plan.stage, tags=extra_tags, nested=nested) as run:
        auc = 0.5 + 0.1 * math.log10(plan.cfg.train.phase1_lr / 1e-4)
        mine = BARRIER / str(__import__("os").getpid())
        if not mine.exists():  # each worker's first trial waits until both workers have one running
            mine.touch()
            deadline = time.time() + 120
            while len(list(BARRIER.iterdir())) < 2 and time.time() < deadline:
                time.sleep(0.2)
        for epoch in range(plan.cfg.train.phase1_epochs):
            mlflow.log_metric("phase1_val_auc", auc, step=epoch)
            on_epoch(1, epoch, {"loss": 0.5, "val_loss": 0.5, "val_auc": auc})
            time.sleep(0.3)
        mlflow.log_metric("val_auc", auc)
        return run.info.run_id


train_module.train = fake_train
from medfake.cli import main

sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.slow
def test_two_workers_share_one_journal(tmp_path, tracking_store, experiments_dir):
    """Two processes on one journal: every trial number once, each with its own run, none lost.

    The workers run `medfake tune` end to end with the train step replaced by a quick stand-in
    (two real trainings in parallel take minutes on 2 busy cores); the real step is covered above.
    """
    import mlflow
    import optuna
    from optuna.trial import TrialState

    from medfake.core import tracking
    from medfake.data.preprocess import cache_path

    tracking.setup("medfake-test")  # create the MLflow schema before two processes race to
    dataset = tiny_dataset(cache_path(load_config("quickstart", ONE_EPOCH), "d" * 16))
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(FAKE_TRAIN))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    # No fixed sampler seed: two workers seeded alike would propose the same first points.
    space = write_space(tmp_path, "{type: none}", text=SPACE.replace("seed: 3", "seed: null"))
    journal = tmp_path / "shared" / "optuna.journal"
    command = [sys.executable, str(script), str(barrier), "tune", "--model", MODEL, "--study", "parallel",
               "--trials", "6", "--storage", str(journal), "--space", str(space), "--data", dataset.digest,
               "--out", str(tmp_path / "tuned.yaml"), "--quiet", *sets(ONE_EPOCH)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
               for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs

    study = optuna.load_study(study_name="parallel", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials))) and 6 <= len(trials) <= 7  # one overshoot at most
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers ran trials
    run_ids = [t.user_attrs["mlflow_run_id"] for t in trials]
    assert len(set(run_ids)) == len(trials)
    children = mlflow.search_runs(experiment_names=["medfake-test"], output_format="list",
                                  filter_string="tags.`medfake.study` = 'parallel' and tags.`medfake.stage` = 'tune'")
    by_trial = {r.info.run_id: r.data.tags.get("medfake.trial") for r in children if "mlflow.parentRunId" in r.data.tags}
    assert sorted(by_trial) == sorted(run_ids)
    assert sorted(int(by_trial[t.user_attrs["mlflow_run_id"]]) for t in trials) == numbers
    assert yaml.safe_load((tmp_path / "tuned.yaml").read_text())["train"]["phase1_lr"] == study.best_params["train.phase1_lr"]
