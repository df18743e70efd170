"""The ``paper`` step: the whole study for one config — preprocess, screen, select, report — resumable.

Screens every registry backbone plus the ``baseline`` (``--models`` limits the set) by launching the
``train`` entry point through ``mlflow.projects.run``, ranks and repeats the best with ``select``,
and renders ``report``. Every step reuses finished runs whose parameters match (same model, seed,
config digest and data digest; a select over the same screen runs with the same options), so a
paper run that crashed or was stopped, run again, continues where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medfake.study import select as sel
from medfake.core.errors import UserError

DEFAULT_CONFIG = "study-cpu"


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


def screen_jobs(cfg, models: list[str], data_digest: str, parent: str) -> list:
    """One screen ``train`` job per model, with the config digest train will tag (for reuse).

    Each run gets its resolved config as a file (``.medfake/configs/<digest>.yaml``) rather than
    ``--set`` overrides, so no value has to survive the entry point's shell quoting.
    """
    jobs = []
    for name in models:
        resolved = cfg.replace(**{"model.backbone": name})
        jobs.append(sel.TrainJob(name, cfg.seed, sel.STAGE_SCREEN, sel.write_config(resolved), "", data_digest,
                                 resolved.digest(), parent))
    return jobs


def paper(cfg, config_ref: str, overrides: str, models: list[str], out: Path, rank_on: str = "val", top_k: int = 6,
          repeats: int = 2, parallel: int = 1, project: str = ".", backend: str = "local", backend_config=None,
          quiet: bool = False, launch=None) -> Path:
    """Run (or resume) the study; returns the report's README path."""
    import mlflow

    from medfake.study import report

    from medfake.core import tracking
    from medfake.data.preprocess import ensure_dataset

    say = sel.Progress("paper", quiet)
    experiment = cfg.experiment
    say(f"step 1/4 preprocess: dataset of config {config_ref} (experiment '{experiment}')")
    dataset, preprocess_run = ensure_dataset(cfg, progress=not quiet)
    digest = dataset.digest
    say(f"step 1/4 preprocess: dataset {digest} ({len(dataset.manifest)} slices, preprocess run {preprocess_run})")
    tags = {tracking.TAG_DATA_DIGEST: digest}
    with tracking.run(experiment, f"paper-{cfg.digest()[:8]}", "paper", tags=tags) as active:
        tracking.log_params({"config": config_ref, "set": overrides, "models": ",".join(models), "rank_on": rank_on,
                             "top_k": top_k, "repeats": repeats, "parallel": parallel, "backend": backend,
                             "data_digest": digest})
        jobs = screen_jobs(cfg, models, digest, active.info.run_id)
        say(f"step 2/4 screen: {len(jobs)} model(s): {', '.join(models)}")
        launcher = launch or (lambda job: sel.launch_train(job, experiment, project, backend, backend_config))
        done, failures = sel.run_jobs(jobs, experiment, parallel, launcher, say, "screen")
        if failures:
            raise sel.RepeatsFailed(
                f"{len(failures)} screen run(s) did not finish: {'; '.join(failures)}; run paper again to retry "
                "only those, or leave a model out with --models")
        screened = set(done.values())
        _, runs = sel.screen_runs(experiment, digest, screened)
        selection = sel.rank_models(runs, rank_on, top_k, experiment, digest)
        previous = sel.existing_select(experiment, selection, repeats)
        if previous is not None:
            select_run_id = previous.info.run_id
            say(f"step 3/4 select: reusing finished select run {select_run_id} (same screen runs and options)")
        else:
            say(f"step 3/4 select: rank on {rank_on}, top {top_k}, {repeats} repeat(s) each")
            select_run_id = sel.select(experiment, rank_on, top_k, repeats, parallel, digest, project, backend,
                                       backend_config, nested=True, say=say, launch=launch, run_ids=screened).select_run_id
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
    sel.add_selection_arguments(parser)
    parser.add_argument("--out", default="", help="report folder (default reports/<experiment>)")


def run(args: argparse.Namespace) -> int:
    from medfake.core.config import config_from_args

    cfg = config_from_args(args)
    overrides = " ".join(item for chunk in args.set for item in chunk.split() if item)
    models = resolve_models(args.models)
    check_sizes(models, cfg.data.image_size)
    backend_config = sel.parse_backend_config(args.backend_config)
    out = Path(args.out or Path("reports") / cfg.experiment).resolve()
    project = sel.enter_project(args.project or None)
    readme = paper(cfg, args.config, overrides, models, out, args.rank_on, args.top_k, args.repeats, args.parallel,
                   project, args.backend, backend_config, args.quiet)
    print(f"report: {readme}")
    return 0
