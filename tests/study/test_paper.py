"""The paper step: model choice, resuming with a stand-in launcher, and one real tiny study end to end."""

from __future__ import annotations

import sys

import mlflow
import pytest
from study_fakes import FakeLauncher  # noqa: F401

from medfake.study import paper as paper_step
from medfake.study.launcher import Launcher
from medfake.study.select import SelectOptions
from medfake.cli import main
from medfake.core.config import load_config
from medfake.core.errors import UserError

TINY_PHANTOM = ("data.phantom.scans=6 data.phantom.lidc_scans=3 data.phantom.size=64 data.phantom.slices=32 "
                "data.image_size=32 data.split=random")
TINY_TRAIN = ("model.weights=none train.phase1_epochs=1 train.phase2_epochs=1 train.precision=float32 "
              "eval.bootstrap_samples=50 eval.latency_steps=2")


def runs_of(experiment, stage=None):
    query = f"tags.`medfake.stage` = '{stage}'" if stage else ""
    return mlflow.search_runs(experiment_names=[experiment], filter_string=query, output_format="list")


def test_models_default_to_the_registry_plus_baseline_and_are_checked():
    models = paper_step.resolve_models("")
    assert len(models) == 14 and models[-1] == "baseline" and "RegNetY040" in models
    assert paper_step.resolve_models("xception, BASELINE,Xception") == ["Xception", "baseline"]
    with pytest.raises(UserError, match="unknown backbone 'resnet9000'.*or baseline"):
        paper_step.resolve_models("resnet9000")
    with pytest.raises(UserError, match="below InceptionV3's minimum input size 75"):
        paper_step.check_sizes(["MobileNetV3Large", "InceptionV3"], 64)
    paper_step.check_sizes(models, 80)


def test_study_cpu_config_fits_every_backbone():
    cfg = load_config("study-cpu")
    assert cfg.experiment == "medfake-study-cpu" and cfg.model.weights == "none"
    paper_step.check_sizes(paper_step.resolve_models(""), cfg.data.image_size)


def test_bad_paper_options_exit_2_before_any_work(project, capsys):  # noqa: F811
    assert main(["paper", "--models", "nope"]) == 2
    assert "--models: unknown backbone 'nope'" in capsys.readouterr().err
    assert main(["paper", "--config", "quickstart", "--set", "data.image_size=64", "--models", "InceptionV3"]) == 2
    assert "minimum input size 75" in capsys.readouterr().err
    assert not (project / "data").exists() and not (project / "reports").exists()


def test_paper_resumes_and_reuses_every_step(project):  # noqa: F811
    overrides = f"experiment=paper-fake {TINY_PHANTOM}"
    cfg = load_config("quickstart", overrides.split())
    launcher = FakeLauncher()
    out = project / "reports" / "paper-fake"
    def options(*models):
        return paper_step.PaperOptions("quickstart", overrides, models, out, SelectOptions("test", 1, 1), quiet=True)

    def launching(fake):
        return Launcher(cfg.experiment, launch=fake, say=lambda message: None)

    readme = paper_step.paper(cfg, options("DenseNet121", "ResNet50V2", "baseline"), launching(launcher))
    assert [(job.stage, job.model) for job in launcher.jobs] == [
        ("screen", "DenseNet121"), ("screen", "ResNet50V2"), ("screen", "baseline"), ("repeat", "ResNet50V2")]
    paper_run = runs_of("paper-fake", "paper")[0]
    assert {job.parent for job in launcher.jobs[:3]} == {paper_run.info.run_id}
    select_run = runs_of("paper-fake", "select")[0]
    assert select_run.data.tags["mlflow.parentRunId"] == paper_run.info.run_id
    assert launcher.jobs[3].parent == select_run.info.run_id
    assert "| 1 | **ResNet50V2** |" in readme.read_text()
    report_files = {a.path for a in mlflow.MlflowClient().list_artifacts(paper_run.info.run_id, "report")}
    assert "report/README.md" in report_files
    # Run again: nothing is trained, the select run is reused, the report is the same.
    text = readme.read_text()
    again = FakeLauncher()
    paper_step.paper(cfg, options("DenseNet121", "ResNet50V2", "baseline"), launching(again))
    assert again.jobs == [] and len(runs_of("paper-fake", "select")) == 1
    assert readme.read_text() == text
    # One more model: only its screen run is new; a new select ranks four, the repeat is reused.
    more = FakeLauncher()
    paper_step.paper(cfg, options("DenseNet121", "ResNet50V2", "baseline", "VGG19"), launching(more))
    assert [(job.stage, job.model) for job in more.jobs] == [("screen", "VGG19")]
    assert len(runs_of("paper-fake", "select")) == 2 and len(runs_of("paper-fake", "repeat")) == 1


@pytest.mark.slow
def test_tiny_paper_end_to_end(project, monkeypatch, capsys):  # noqa: F811
    """Two real backbones at 32², 1 + 0 epochs (phase 2 is covered by the train tests): screen, rank, one repeat of the best, report."""
    monkeypatch.setenv("PATH", f"{sys.executable.rsplit('/', 1)[0]}:{__import__('os').environ['PATH']}")
    argv = ["paper", "--config", "quickstart", "--set", f"experiment=paper-e2e {TINY_PHANTOM} {TINY_TRAIN} train.phase2_epochs=0",
            "--models", "MobileNetV3Large,VGG19", "--repeats", "1", "--top-k", "1", "--parallel", "2", "--out", "report"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    for step in ("step 1/4 preprocess", "step 2/4 screen", "step 3/4 select", "step 4/4 report", "screen 2/2"):
        assert step in err
    screens = runs_of("paper-e2e", "screen")
    repeats = runs_of("paper-e2e", "repeat")
    assert sorted(run.data.params["model"] for run in screens) == ["MobileNetV3Large", "VGG19"]
    assert all(run.info.status == "FINISHED" for run in screens + repeats) and len(repeats) == 1
    select_run = runs_of("paper-e2e", "select")[0]
    assert repeats[0].data.tags["mlflow.parentRunId"] == select_run.info.run_id
    assert int(repeats[0].data.params["seed"]) == int(screens[0].data.params["seed"]) + 1
    text = (project / "report" / "README.md").read_text()
    assert "| MobileNetV3Large | ours |" in text and "| VGG19 | ours |" in text
    assert (project / "report" / "figures" / "figure7_confusion_matrices.png").is_file()
    assert (project / "report" / "figures" / "figure4_embedding_tsne.png").is_file()
    # Rerun: every step is reused, nothing new is trained.
    assert main(argv) == 0
    assert "reusing 2 of 2 finished run(s)" in capsys.readouterr().err
    assert len(runs_of("paper-e2e", "screen")) == 2 and len(runs_of("paper-e2e", "repeat")) == 1
