"""The ``select`` step: rank screened backbones by H, repeat the best, compare them (study section 5).

Reads the FINISHED ``screen`` runs of one data digest (newest per model), ranks them by H =
harmonic mean of accuracy, F1 and specificity (Table A1, eq. 4) on the validation split (``--rank-on
test`` reproduces the study, which chose on test metrics), keeps the ``--top-k`` backbones and
launches ``--repeats`` more ``train`` runs of each through ``mlflow.projects.run`` with seeds
screen seed + 1, + 2, …. Finished repeats with the same model, seed, config and data digest are
reused, so an interrupted select, run again, only does what is left. The select run logs the
ranking (Table A1), mean ± sample std over each kept model's runs (Table 2), Pearson correlations
of the models' metric vectors (Figures 5, 6) and pairwise McNemar / DeLong tests, which the study
lacks. The baseline is ranked (it is the floor) but never repeated.

Ranking lives in :mod:`~medfake.study.ranking`, launching in :mod:`~medfake.study.launcher`, the
comparisons in :mod:`~medfake.study.statistics` and the markdown in :mod:`~medfake.study.tables`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from medfake.core import tracking
from medfake.core.contract import (
    STAGE_REPEAT,
    STAGE_SELECT,
    TAG_DATA_DIGEST,
    TAG_REPEATS_FAILED,
    TAG_SCREEN_RUNS,
    TAG_STAGE,
    TAG_TOP_MODELS,
)
from medfake.core.errors import UserError
from medfake.study.launcher import (
    Launcher,
    Progress,
    RepeatsFailed,
    TrainJob,
    enter_project,
    parse_backend_config,
    write_config,
)
from medfake.study.ranking import RANK_SPLITS, Selection, rank_models, screen_config, screen_runs
from medfake.study.statistics import Results, gather
from medfake.study.tables import STD_NOTE, ranking_frame, ranking_markdown, significance_markdown, table2_markdown


@dataclass(frozen=True)
class SelectOptions:
    """How to rank and how much to repeat (``--rank-on``, ``--top-k``, ``--repeats``)."""

    rank_on: str = "val"
    top_k: int = 6
    repeats: int = 2


def repeat_jobs(selection: Selection, repeats: int, parent: str = "") -> tuple[list[TrainJob], list[str]]:
    """The repeats of every kept model: seeds screen seed + 1 … + repeats, the screen run's own config."""
    jobs, warnings = [], []
    for entry in selection.kept:
        cfg = screen_config(entry.run_id)
        if cfg is None:
            raise UserError(f"screen run {entry.run_name} ({entry.run_id}) has no config.yaml artifact "
                            "to repeat it with")
        if entry.config_digest and cfg.digest() != entry.config_digest:
            warnings.append(f"{entry.run_name}: config.yaml gives digest {cfg.digest()}, "
                            f"the run's tag says {entry.config_digest}")
        path = write_config(cfg)
        for offset in range(1, repeats + 1):
            seed = entry.seed + offset
            jobs.append(TrainJob(entry.model, seed, STAGE_REPEAT, path, "", selection.data_digest,
                                 cfg.replace(seed=seed).digest(), parent))
    return jobs, warnings


def existing_select(experiment: str, selection: Selection, repeats: int):
    """A FINISHED select run over the same screen runs with the same options, or None."""
    return tracking.find_finished_run(
        experiment, stage=STAGE_SELECT,
        tags={TAG_DATA_DIGEST: selection.data_digest, TAG_SCREEN_RUNS: selection.screen_runs_digest()},
        params={"rank_on": selection.rank_on, "top_k": selection.top_k, "repeats": repeats})


def log_results(results: Results) -> None:
    """Everything the select run leaves behind: tables as CSV and markdown, heatmaps as PNG."""
    import mlflow
    import pandas as pd

    from medfake.core import plots

    selection = results.selection
    with tracking.artifact_tempdir() as tmp:
        folder = Path(tmp)
        ranking_frame(selection).to_csv(folder / "ranking.csv", index=False)
        (folder / "ranking.md").write_text(
            f"H on the {selection.rank_on} split; the {len(selection.kept)} repeated models in bold.\n\n"
            + ranking_markdown(selection))
        results.table2.to_csv(folder / "table2.csv", index=False)
        (folder / "table2.md").write_text(
            f"Test metrics over each model's runs. {STD_NOTE}.\n\n" + table2_markdown(results))
        runs = [(model, run.info.run_id, run.data.tags.get(TAG_STAGE, ""), tracking.params_of(run).get("seed", ""))
                for model, found in results.runs.items() for run in found]
        pd.DataFrame(runs, columns=["model", "run_id", "stage", "seed"]).to_csv(folder / "runs.csv", index=False)
        for name, matrix, title in (
            ("correlation_all", results.correlation_all, "Pearson correlation, all screened models (Fig. 5)"),
            ("correlation_top", results.correlation_top, f"Pearson correlation, top {len(selection.kept)} (Fig. 6)"),
        ):
            matrix.to_csv(folder / f"{name}.csv")
            if len(matrix):
                plots.correlation_heatmap(matrix, folder / f"{name}.png", title)
        results.significance.to_csv(folder / "significance.csv", index=False)
        (folder / "significance.md").write_text(significance_markdown(results.significance))
        if results.notes:
            (folder / "notes.txt").write_text("\n".join(results.notes) + "\n")
        mlflow.log_artifacts(str(folder), "select")
    mlflow.log_metrics({"best_h": selection.ranked[0].h, "models_ranked": len(selection.ranked),
                        "models_kept": len(selection.kept)})


def select(launcher: Launcher, options: SelectOptions = SelectOptions(), data_digest: str | None = None,
           nested: bool = False, run_ids: set[str] | None = None) -> Results:
    """Rank, launch/reuse repeats, log the tables in a select run; returns the results.

    ``launcher.project`` must already be the working folder (see :func:`enter_project`). Raises
    :class:`RepeatsFailed` (after logging what it could) when launched repeats did not finish.
    """
    import mlflow

    experiment, say = launcher.experiment, launcher.say
    rank_on, top_k, repeats = options.rank_on, options.top_k, options.repeats
    if repeats < 0:
        raise UserError(f"--repeats must be 0 or more, got {repeats}")
    if launcher.parallel < 1:
        raise UserError(f"--parallel must be at least 1, got {launcher.parallel}")
    digest, runs = screen_runs(experiment, data_digest, run_ids)
    selection = rank_models(runs, rank_on, top_k, experiment, digest)
    for warning in selection.warnings:
        say(f"warning: {warning}")
    say(f"ranked {len(selection.ranked)} screened model(s) by H on {rank_on}; repeating "
        + (", ".join(entry.model for entry in selection.kept) if repeats else "none (--repeats 0)"))
    tags = {TAG_DATA_DIGEST: digest, TAG_SCREEN_RUNS: selection.screen_runs_digest(),
            TAG_TOP_MODELS: ",".join(entry.model for entry in selection.kept)}
    with tracking.run(experiment, f"select-{rank_on}-top{top_k}", STAGE_SELECT, tags=tags, nested=nested) as active:
        tracking.log_params({"rank_on": rank_on, "top_k": top_k, "repeats": repeats, "data_digest": digest,
                             "parallel": launcher.parallel, "backend": launcher.backend})
        with tracking.artifact_tempdir() as tmp:
            (Path(tmp) / "ranking.md").write_text(ranking_markdown(selection))
            mlflow.log_artifact(str(Path(tmp) / "ranking.md"), "select")
        failures: list[str] = []
        if repeats:
            jobs, warnings = repeat_jobs(selection, repeats, parent=active.info.run_id)
            for warning in warnings:
                say(f"warning: {warning}")
            _, failures = launcher.run_jobs(jobs, STAGE_REPEAT)
        results = gather(selection, repeats)
        results.select_run_id = active.info.run_id
        log_results(results)
        if failures:
            mlflow.set_tag(TAG_REPEATS_FAILED, str(len(failures)))
            raise RepeatsFailed(f"{len(failures)} repeat run(s) did not finish: {'; '.join(failures)}; "
                                "run select again to retry only those")
    return results


# -- CLI -------------------------------------------------------------------------------------------
def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``select`` and ``paper``."""
    parser.add_argument("--rank-on", choices=RANK_SPLITS, default="val",
                        help="split whose H ranks the models (default val; test reproduces the study)")
    parser.add_argument("--top-k", type=int, default=6, help="backbones to keep and repeat (default 6)")
    parser.add_argument("--repeats", type=int, default=2, help="extra runs per kept model (default 2; 0 only ranks)")
    parser.add_argument("--parallel", type=int, default=1, help="runs launched at a time (default 1)")
    parser.add_argument("--backend", default="local", help="mlflow.projects backend: local (default), kubernetes, …")
    parser.add_argument("--backend-config", default="", help="backend config: a .json file or a JSON object")
    parser.add_argument("--project", default="",
                        help="MLproject folder the runs are launched from (default: here, else the checkout)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def selection_from_args(args: argparse.Namespace) -> SelectOptions:
    return SelectOptions(rank_on=args.rank_on, top_k=args.top_k, repeats=args.repeats)


def launcher_from_args(args: argparse.Namespace, experiment: str, step: str) -> Launcher:
    """Parse ``--backend-config``, enter the project folder, and bundle where the runs go."""
    backend_config = parse_backend_config(args.backend_config)
    project = enter_project(args.project or None)
    return Launcher(experiment, project, args.backend, backend_config, args.parallel, say=Progress(step, args.quiet))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from medfake.core.config import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--experiment", default="", help="MLflow experiment (default: the config's)")
    parser.add_argument("--data-digest", default="", help="rank only screen runs of this data digest")
    add_selection_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the ranking as a JSON list")


def experiment_of(args: argparse.Namespace) -> str:
    """``--experiment``, else the experiment named by ``--config``/``--set``."""
    if getattr(args, "experiment", ""):
        return args.experiment
    from medfake.core.config import config_from_args

    return config_from_args(args).experiment


@contextlib.contextmanager
def output_to_stderr(enabled: bool) -> Iterator[None]:
    """Send file descriptor 1 to stderr meanwhile, so launched runs' output cannot mix into ``--json``."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run(args: argparse.Namespace) -> int:
    launcher = launcher_from_args(args, experiment_of(args), "select")
    options = selection_from_args(args)
    with output_to_stderr(args.json):
        results = select(launcher, options, args.data_digest or None)
    if args.json:
        print(json.dumps([entry.as_json() for entry in results.selection.ranked], indent=2))
    else:
        print(f"\nTable A1 — H on {args.rank_on} (repeated models in bold)\n")
        print(ranking_markdown(results.selection))
        if args.repeats:
            print(f"Table 2 — test metrics; {STD_NOTE}\n")
            print(table2_markdown(results))
    return 0
