"""The ``paper`` step: the whole study for one config — preprocess, screen, select, report — resumable.

Screens every registry backbone plus the ``baseline`` (``--models`` limits the set) by launching the
``train`` entry point through ``mlflow.projects.run``, ranks and repeats the best with ``select``,
and renders ``report``. Every step reuses finished runs whose parameters match (same model, seed,
config digest and data digest; a select over the same screen runs with the same options), so a
paper run that crashed or was stopped, run again, continues where it stopped.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from medfake.core import tracking
from medfake.core.contract import BASELINE, STAGE_PAPER, STAGE_SCREEN
from medfake.core.errors import UserError
from medfake.data.preprocess import ensure_dataset
from medfake.study import generalisation, report
from medfake.study.ensemble import paper_ensemble
from medfake.study.launcher import Launcher, RepeatsFailed, TrainJob, write_config
from medfake.study.ranking import rank_models, screen_runs
from medfake.study.select import SelectOptions, add_selection_arguments, existing_select, launcher_from_args, select

DEFAULT_CONFIG = "study-cpu"


@dataclass(frozen=True)
class PaperOptions:
    """What to study: the config as named (``--config``, ``--set``), the models, the report folder,
    the ranking options, and whether to show progress."""

    config_ref: str
    overrides: str
    models: tuple[str, ...]
    out: Path
    selection: SelectOptions = field(default_factory=SelectOptions)
    quiet: bool = False


def resolve_models(text: str) -> list[str]:
    """``--models`` (comma-separated, any letter case) → registry spellings; default all 13 + baseline."""
    from medfake.models.registry import get_backbone, list_backbones

    if not text.strip():
        return [backbone.name for backbone in list_backbones()] + [BASELINE]
    names = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            name = BASELINE if item.lower() == BASELINE else get_backbone(item).name
        except UserError as exc:
            raise UserError(f"--models: {exc} (or {BASELINE})") from None
        if name not in names:
            names.append(name)
    if not names:
        raise UserError("--models names no model")
    return names


def check_sizes(models: list[str], image_size: int) -> None:
    """Fail before any work when the config's image size is below a backbone's minimum."""
    from medfake.models.registry import get_backbone

    for name in models:
        if name != BASELINE and image_size < get_backbone(name).min_size:
            raise UserError(f"data.image_size {image_size} is below {name}'s minimum input size "
                            f"{get_backbone(name).min_size}; raise it or leave {name} out with --models")


def screen_jobs(cfg, models: list[str] | tuple[str, ...], data_digest: str, parent: str) -> list[TrainJob]:
    """One screen ``train`` job per model, with the config digest train will tag (for reuse).

    Each run gets its resolved config as a file (``.medfake/configs/<digest>.yaml``) rather than
    ``--set`` overrides, so no value has to survive the entry point's shell quoting.
    """
    jobs = []
    for name in models:
        resolved = cfg.replace(**{"model.backbone": name})
        jobs.append(TrainJob(name, cfg.seed, STAGE_SCREEN, write_config(resolved), "", data_digest,
                             resolved.digest(), parent))
    return jobs


def paper(cfg, options: PaperOptions, launcher: Launcher) -> Path:
    """Run (or resume) the study; returns the report's README path.

    ``launcher`` launches into the config's experiment, from the project folder (the working
    folder already, see :func:`~medfake.study.launcher.enter_project`).
    """
    import mlflow

    if launcher.experiment != cfg.experiment:
        raise ValueError(f"the launcher's experiment '{launcher.experiment}' is not the config's '{cfg.experiment}'")
    say, experiment, ranking = launcher.say, cfg.experiment, options.selection
    models, out = list(options.models), options.out
    generalisation.target_config(cfg, options.overrides)  # study.generalise_to: checked before any work
    say(f"step 1/4 preprocess: dataset of config {options.config_ref} (experiment '{experiment}')")
    dataset, preprocess_run = ensure_dataset(cfg, progress=not options.quiet)
    digest = dataset.digest
    say(f"step 1/4 preprocess: dataset {digest} ({len(dataset.manifest)} slices, preprocess run {preprocess_run})")
    tags = {tracking.TAG_DATA_DIGEST: digest}
    with tracking.run(experiment, f"paper-{cfg.digest()[:8]}", STAGE_PAPER, tags=tags) as active:
        tracking.log_params({"config": options.config_ref, "set": options.overrides, "models": ",".join(models),
                             "rank_on": ranking.rank_on, "top_k": ranking.top_k, "repeats": ranking.repeats,
                             "parallel": launcher.parallel, "backend": launcher.backend, "data_digest": digest})
        jobs = screen_jobs(cfg, models, digest, active.info.run_id)
        say(f"step 2/4 screen: {len(jobs)} model(s): {', '.join(models)}")
        done, failures = launcher.run_jobs(jobs, STAGE_SCREEN)
        if failures:
            raise RepeatsFailed(
                f"{len(failures)} screen run(s) did not finish: {'; '.join(failures)}; run paper again to retry "
                "only those, or leave a model out with --models")
        screened = set(done.values())
        _, runs = screen_runs(experiment, digest, screened)
        selection = rank_models(runs, ranking.rank_on, ranking.top_k, experiment, digest)
        previous = existing_select(experiment, selection, ranking.repeats)
        if previous is not None:
            select_run_id = previous.info.run_id
            say(f"step 3/4 select: reusing finished select run {select_run_id} (same screen runs and options)")
        else:
            say(f"step 3/4 select: rank on {ranking.rank_on}, top {ranking.top_k}, {ranking.repeats} repeat(s) each")
            select_run_id = select(launcher, ranking, digest, nested=True, run_ids=screened).select_run_id
        generalisation.generalise(cfg, options.overrides, selection.kept, say, options.quiet)
        paper_ensemble(cfg, select_run_id, say, options.quiet)  # config study.ensemble
        say(f"step 4/4 report: {out}")
        readme = report.render(experiment, out, digest, select_run_id=select_run_id)
        mlflow.log_artifacts(str(out), "report")
    say(f"done: {readme}")
    return readme


# -- CLI ------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"experiment file or name (default: {DEFAULT_CONFIG})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable; one string may hold several)")
    parser.add_argument("--models", default="", help="comma-separated subset, e.g. DenseNet121,Xception,baseline "
                                                     "(default: all 13 backbones + baseline)")
    add_selection_arguments(parser)
    parser.add_argument("--out", default="", help="report folder (default reports/<experiment>)")


def run(args: argparse.Namespace) -> int:
    from medfake.core.config import config_from_args

    cfg = config_from_args(args)
    overrides = " ".join(item for chunk in args.set for item in chunk.split() if item)
    models = resolve_models(args.models)
    check_sizes(models, cfg.data.image_size)
    out = Path(args.out or Path("reports") / cfg.experiment).resolve()  # before entering the project folder
    launcher = launcher_from_args(args, cfg.experiment, "paper")
    options = PaperOptions(args.config, overrides, tuple(models), out,
                           SelectOptions(args.rank_on, args.top_k, args.repeats), args.quiet)
    readme = paper(cfg, options, launcher)
    print(f"report: {readme}")
    return 0
