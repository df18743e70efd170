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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from medfake.core import tracking
from medfake.core.contract import BASELINE
from medfake.core.errors import UserError
from medfake.training.metrics import METRICS, STUDY_VECTOR

STAGE_SCREEN = "screen"
STAGE_REPEAT = "repeat"
STAGE_SELECT = "select"
RANK_SPLITS = ("val", "test")
H_INPUTS = ("accuracy", "f1", "specificity")

TAG_MODEL = "medfake.model"
TAG_SCREEN_RUNS = "medfake.screen_runs_digest"
CONFIG_FOLDER = Path(".medfake") / "configs"
POLL_SECONDS = 2.0
STD_NOTE = "± is the sample standard deviation (ddof = 1) over the model's runs; — where there is one run"


class RepeatsFailed(UserError):
    """Some launched runs did not finish; rerunning the step retries only those."""

    exit_code = 1


# -- reading the store ----------------------------------------------------------------------
def use_store() -> str:
    """Point MLflow at the store (env ``MLFLOW_TRACKING_URI`` or ./mlflow.db) without creating anything."""
    import mlflow

    from medfake.core.tracking import DEFAULT_TRACKING_URI

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one progress line per event is ours
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    mlflow.set_tracking_uri(uri)
    return uri


def search_runs(experiment: str, filter_string: str = "", finished: bool = True) -> list:
    """Runs of an existing experiment matching a filter, newest first; a one-line error if it does not exist."""
    from mlflow.tracking import MlflowClient

    use_store()
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise UserError(f"no MLflow experiment named '{experiment}' in the store "
                        f"(experiments: {', '.join(names) or 'none'})")
    clauses = (["attributes.status = 'FINISHED'"] if finished else []) + ([filter_string] if filter_string else [])
    runs, token = [], None
    while True:
        page = client.search_runs(
            [found.experiment_id], filter_string=" and ".join(clauses), max_results=1000,
            order_by=["attributes.start_time DESC", "attributes.run_id ASC"], page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def model_of(run) -> str:
    """Registry spelling of the run's model (tag, else param)."""
    return run.data.tags.get(TAG_MODEL) or run.data.params.get("model", "")


def _tag_filter(**tags: str) -> str:
    names = {"stage": "medfake.stage", "data_digest": "medfake.data_digest", "config_digest": "medfake.config_digest",
             "model": TAG_MODEL}
    return " and ".join(f"tags.`{names[key]}` = '{value}'" for key, value in tags.items())


def find_finished(experiment: str, stage: str, model: str, seed: int, config_digest: str, data_digest: str):
    """The newest FINISHED run of this stage, model, seed, config and data digest, or None."""
    query = _tag_filter(stage=stage, model=model, config_digest=config_digest, data_digest=data_digest)
    runs = search_runs(experiment, f"{query} and params.seed = '{seed}'")
    return runs[0] if runs else None


def screen_runs(experiment: str, data_digest: str | None = None, run_ids: set[str] | None = None) -> tuple[str, list]:
    """(data digest, newest FINISHED screen run per model) — refusing a mix of data digests.

    ``run_ids`` limits the choice to those runs (a driver's own screens, a select run's ranking).
    """
    runs = search_runs(experiment, _tag_filter(stage=STAGE_SCREEN))
    if run_ids is not None:
        runs = [run for run in runs if run.info.run_id in run_ids]
    if not runs:
        raise UserError(
            f"experiment '{experiment}' has no FINISHED screen runs; train some first "
            "(`medfake train --model NAME` or `medfake paper`)"
        )
    by_digest: dict[str, list] = {}
    for run in runs:
        by_digest.setdefault(run.data.tags.get("medfake.data_digest", ""), []).append(run)
    listing = ", ".join(f"{digest or '(none)'} ({len(found)} runs)" for digest, found in sorted(by_digest.items()))
    if data_digest:
        if data_digest not in by_digest:
            raise UserError(f"no FINISHED screen runs with data digest '{data_digest}' in '{experiment}' "
                            f"(found: {listing})")
        chosen = data_digest
    elif len(by_digest) > 1:
        raise UserError(f"screen runs of {len(by_digest)} data digests are mixed in '{experiment}': {listing}; "
                        "pick one with --data-digest")
    else:
        chosen = next(iter(by_digest))
    newest: dict[str, Any] = {}
    for run in by_digest[chosen]:  # newest first
        newest.setdefault(model_of(run), run)
    return chosen, [newest[name] for name in sorted(newest)]


# -- ranking (Table A1) -----------------------------------------------------------------------
@dataclass
class Screened:
    """One screened model with its H on the ranking split."""

    model: str
    run_id: str
    run_name: str
    seed: int
    config_digest: str
    metrics: dict[str, float]
    h: float
    accuracy: float
    f1: float
    specificity: float
    rank: int = 0
    kept: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"model": self.model, "run_id": self.run_id, "h": self.h, "accuracy": self.accuracy, "f1": self.f1,
                "specificity": self.specificity, "rank": self.rank, "kept": self.kept}


@dataclass
class Selection:
    """The ranking of one experiment and data digest."""

    experiment: str
    data_digest: str
    rank_on: str
    top_k: int
    ranked: list[Screened]
    warnings: list[str] = field(default_factory=list)

    @property
    def kept(self) -> list[Screened]:
        return [entry for entry in self.ranked if entry.kept]

    def screen_runs_digest(self) -> str:
        """Which screen runs the ranking used (a select run whose inputs match can be reused)."""
        import hashlib

        text = ",".join(sorted(entry.run_id for entry in self.ranked))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def rank_models(runs: list, rank_on: str, top_k: int, experiment: str = "", data_digest: str = "") -> Selection:
    """Rank runs by H on ``rank_on`` (ties by name), keep the first ``top_k`` backbones.

    A run lacking one of the three metrics is skipped with a warning; the baseline is ranked but
    not kept. Fewer backbones than ``top_k`` keeps them all, with a warning.
    """
    from medfake.training.metrics import h_score

    if rank_on not in RANK_SPLITS:
        raise UserError(f"--rank-on must be one of {', '.join(RANK_SPLITS)}, got '{rank_on}'")
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    warnings: list[str] = []
    entries = []
    for run in runs:
        keys = [f"{rank_on}_{name}" for name in H_INPUTS]
        values = [run.data.metrics.get(key, math.nan) for key in keys]
        missing = [key for key, value in zip(keys, values) if not math.isfinite(value)]
        name = model_of(run)
        if missing:
            warnings.append(f"skipping screen run {run.info.run_name} ({run.info.run_id}): "
                            f"missing metric {', '.join(missing)}")
            continue
        accuracy, f1, specificity = values
        try:
            seed = int(tracking.params_of(run).get("seed", "0"))
        except ValueError:
            warnings.append(f"skipping screen run {run.info.run_name} ({run.info.run_id}): "
                            "param seed is not an integer")
            continue
        entries.append(Screened(
            model=name, run_id=run.info.run_id, run_name=run.info.run_name or name, seed=seed,
            config_digest=run.data.tags.get("medfake.config_digest", ""), metrics=dict(run.data.metrics),
            h=h_score(accuracy, f1, specificity), accuracy=accuracy, f1=f1, specificity=specificity,
        ))
    if not entries:
        raise UserError(f"no screen run in '{experiment}' has {rank_on}_accuracy, {rank_on}_f1 and "
                        f"{rank_on}_specificity")
    entries.sort(key=lambda entry: (-entry.h, entry.model))
    backbones = 0
    for position, entry in enumerate(entries, start=1):
        entry.rank = position
        if entry.model != BASELINE and backbones < top_k:
            entry.kept = True
            backbones += 1
    if backbones < top_k:
        warnings.append(f"only {backbones} screened backbone(s), fewer than --top-k {top_k}: keeping all {backbones}")
    return Selection(experiment, data_digest, rank_on, top_k, entries, warnings)


# -- repeats ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainJob:
    """One ``train`` entry-point run to launch (or reuse if an identical one finished)."""

    model: str
    seed: int
    stage: str
    config: str          # config name or file, as the entry point's ``config`` parameter
    overrides: str       # the entry point's ``set`` parameter
    data_digest: str
    config_digest: str   # the digest train will tag: what the reuse check matches
    parent: str = ""

    @property
    def run_name(self) -> str:
        return f"{self.model}-s{self.seed}"

    def parameters(self) -> dict[str, str]:
        return {"model": self.model, "config": self.config, "seed": str(self.seed), "data": self.data_digest,
                "stage": self.stage, "parent": self.parent, "set": self.overrides}


def screen_config(run_id: str):
    """The resolved config a run logged (``config.yaml``), or None when the run has none."""
    import mlflow

    from medfake.core.config import load_config
    from medfake.core.tracking import artifact_tempdir

    with artifact_tempdir() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.yaml", dst_path=tmp)
        except Exception:  # noqa: BLE001 - any missing or unreadable artifact means "no config"
            return None
        return load_config(path)


def write_config(cfg) -> str:
    """Save a resolved config under ``.medfake/configs/<digest>.yaml`` for launched runs; returns that path."""
    CONFIG_FOLDER.mkdir(parents=True, exist_ok=True)
    path = CONFIG_FOLDER / f"{cfg.digest()}.yaml"
    path.write_text(cfg.to_yaml())
    return path.as_posix()


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


def launch_train(job: TrainJob, experiment: str, project: str, backend: str = "local", backend_config=None):
    """Start one ``train`` run of the project (asynchronously) and return its ``SubmittedRun``."""
    import mlflow.projects

    return mlflow.projects.run(
        uri=project, entry_point="train", parameters=job.parameters(), experiment_name=experiment,
        env_manager="local", backend=backend, backend_config=backend_config, synchronous=False,
        run_name=job.run_name,
    )


class Progress:
    """One line per event on stderr: step, what, how many left, elapsed time."""

    def __init__(self, step: str, quiet: bool = False):
        self.step = step
        self.quiet = quiet
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        seconds = int(time.monotonic() - self.start)
        clock = f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        print(f"[{self.step} {clock}] {message}", file=sys.stderr, flush=True)


def run_jobs(jobs: list[TrainJob], experiment: str, parallel: int, launch: Callable, say: Callable[[str], None],
             what: str) -> tuple[dict[TrainJob, str], list[str]]:
    """Reuse finished runs, launch the rest ``parallel`` at a time; returns (job → run id, failures).

    Ctrl-C cancels the runs in flight (they end KILLED) and re-raises.
    """
    from mlflow.tracking import MlflowClient

    if parallel < 1:
        raise UserError(f"--parallel must be at least 1, got {parallel}")
    done: dict[TrainJob, str] = {}
    pending = []
    for job in jobs:
        found = find_finished(experiment, job.stage, job.model, job.seed, job.config_digest, job.data_digest)
        if found is not None:
            done[job] = found.info.run_id
        else:
            pending.append(job)
    total = len(jobs)
    if done:
        say(f"{what}: reusing {len(done)} of {total} finished run(s): "
            + ", ".join(job.run_name for job in jobs if job in done))
    failures: list[str] = []
    active: dict[TrainJob, Any] = {}
    to_launch, launched = len(pending), 0
    try:
        while pending or active:
            while pending and len(active) < parallel:
                job = pending.pop(0)
                submitted = launch(job)
                active[job] = submitted
                launched += 1
                say(f"{what} {launched}/{to_launch} {job.run_name}: launched run {submitted.run_id} "
                    f"({len(active)} running, {len(pending)} waiting)")
            finished = [job for job, submitted in active.items()
                        if submitted.get_status() not in ("RUNNING", "SCHEDULED")]
            if not finished:
                if parallel == 1 and len(active) == 1:
                    next(iter(active.values())).wait()
                else:
                    time.sleep(POLL_SECONDS)
                continue
            for job in finished:
                submitted = active.pop(job)
                status = MlflowClient().get_run(submitted.run_id).info.status
                if status == "FINISHED":
                    done[job] = submitted.run_id
                    left = len(pending) + len(active)
                    say(f"{what} {job.run_name}: finished ({len(done)}/{total} done, {left} left)")
                else:
                    failures.append(f"{job.run_name} ({submitted.run_id}, {status})")
                    say(f"{what} {job.run_name}: ended {status}, see run {submitted.run_id} (tag medfake.failure)")
    except KeyboardInterrupt:
        for submitted in active.values():
            submitted.cancel()
        raise
    return done, failures


# -- aggregation (Table 2), correlation (Figs. 5, 6), significance ----------------------------
def aggregate(metrics_by_model: dict[str, list[dict[str, float]]], prefix: str = "test_"):
    """Mean and sample std (ddof = 1) of every ``{prefix}*`` metric over each model's runs.

    Long format: columns model, metric, n (runs with that metric), mean, std (NaN for one run).
    """
    import pandas as pd

    rows = []
    for model, runs in metrics_by_model.items():
        keys = sorted({key for run in runs for key in run if key.startswith(prefix)})
        for key in keys:
            values = np.array([run[key] for run in runs if key in run and math.isfinite(run[key])], dtype=np.float64)
            if values.size == 0:
                continue
            std = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
            rows.append({"model": model, "metric": key, "n": int(values.size), "mean": float(values.mean()),
                         "std": std})
    return pd.DataFrame(rows, columns=["model", "metric", "n", "mean", "std"])


def vectors(metrics_by_model: dict[str, dict[str, float]], prefix: str = "test_"):
    """Models × STUDY_VECTOR table of the study's metric vector; models lacking a value are left out."""
    import pandas as pd

    rows = {}
    for model, values in metrics_by_model.items():
        vector = [values.get(f"{prefix}{name}", math.nan) for name in STUDY_VECTOR]
        if all(math.isfinite(v) for v in vector):
            rows[model] = vector
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(STUDY_VECTOR))


def correlation(table):
    """Pearson correlation between models' metric vectors (study eq. 2, Figs. 5 and 6)."""
    from medfake.training.metrics import model_correlation

    return model_correlation(table)


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (family = all pairs of one test)."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    running = 0.0
    for position, index in enumerate(order):
        running = max(running, min(1.0, (p.size - position) * p[index]))
        adjusted[index] = running
    return adjusted


def significance(predictions: dict[str, Any]):
    """Pairwise tests on one test set: McNemar on predicted labels, DeLong on AUC, Holm-adjusted.

    ``predictions``: model → DataFrame with columns source, scan_id, slice, label, score, predicted
    (the train step's ``predictions/test.csv``). Rows are matched on (source, scan_id, slice).
    """
    import pandas as pd

    from medfake.training.metrics import delong_auc_test, mcnemar

    keys = ["source", "scan_id", "slice"]
    names = sorted(predictions)
    aligned = {name: predictions[name].sort_values(keys).reset_index(drop=True) for name in names}
    rows = []
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            a, b = aligned[first], aligned[second]
            if len(a) != len(b) or not (a[keys].astype(str).to_numpy() == b[keys].astype(str).to_numpy()).all():
                continue  # not the same test set
            labels = a["label"].to_numpy(np.int64)
            right_a = a["predicted"].to_numpy(np.int64) == labels
            right_b = b["predicted"].to_numpy(np.int64) == labels
            statistic, p_mcnemar = mcnemar(labels, a["predicted"].to_numpy(np.int64), b["predicted"].to_numpy(np.int64))
            try:
                auc_a, auc_b, z, p_delong = delong_auc_test(labels, a["score"].to_numpy(float),
                                                            b["score"].to_numpy(float))
            except ValueError:
                auc_a = auc_b = z = p_delong = math.nan
            rows.append({
                "model_a": first, "model_b": second, "n": int(labels.size),
                "only_a_right": int(np.sum(right_a & ~right_b)), "only_b_right": int(np.sum(~right_a & right_b)),
                "mcnemar_statistic": statistic, "mcnemar_p": p_mcnemar,
                "auc_a": auc_a, "auc_b": auc_b, "delong_z": z, "delong_p": p_delong,
            })
    frame = pd.DataFrame(rows, columns=["model_a", "model_b", "n", "only_a_right", "only_b_right", "mcnemar_statistic",
                                        "mcnemar_p", "auc_a", "auc_b", "delong_z", "delong_p"])
    if len(frame):
        frame["mcnemar_p_holm"] = holm(frame["mcnemar_p"].to_numpy())
        finite = frame["delong_p"].notna().to_numpy()
        adjusted = np.full(len(frame), math.nan)
        adjusted[finite] = holm(frame.loc[finite, "delong_p"].to_numpy())
        frame["delong_p_holm"] = adjusted
    else:
        frame["mcnemar_p_holm"] = []
        frame["delong_p_holm"] = []
    return frame


def download_predictions(run_id: str):
    """The run's ``predictions/test.csv`` as a DataFrame, or None if it has none."""
    import mlflow
    import pandas as pd

    from medfake.core.tracking import artifact_tempdir

    with artifact_tempdir() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="predictions/test.csv",
                                                       dst_path=tmp)
        except Exception:  # noqa: BLE001 - a run without predictions is left out of the tests
            return None
        return pd.read_csv(path, dtype={"scan_id": str, "source": str})


# -- everything the tables need, from the store -----------------------------------------------
@dataclass
class Results:
    """The study's tables for one ranking: runs used, Table 2, correlations, significance."""

    selection: Selection
    repeats: int
    runs: dict[str, list]             # kept model → [screen run, repeat runs …] (FINISHED)
    table2: Any                       # aggregate() of test metrics
    correlation_all: Any              # Figure 5
    correlation_top: Any              # Figure 6
    significance: Any
    notes: list[str] = field(default_factory=list)
    select_run_id: str = ""


def gather(selection: Selection, repeats: int) -> Results:
    """Collect each kept model's finished runs (screen + repeats of the planned seeds) and compute the tables."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    notes = list(selection.warnings)
    runs: dict[str, list] = {}
    for entry in selection.kept:
        found = [client.get_run(entry.run_id)]
        cfg = screen_config(entry.run_id) if repeats else None
        for offset in range(1, repeats + 1):
            seed = entry.seed + offset
            if cfg is not None:
                run = find_finished(selection.experiment, STAGE_REPEAT, entry.model, seed,
                                    cfg.replace(seed=seed).digest(), selection.data_digest)
            else:
                query = _tag_filter(stage=STAGE_REPEAT, model=entry.model, data_digest=selection.data_digest)
                matches = search_runs(selection.experiment, f"{query} and params.seed = '{seed}'")
                run = matches[0] if matches else None
            if run is None:
                notes.append(f"{entry.model}: no finished repeat with seed {seed}")
            else:
                found.append(run)
        runs[entry.model] = found
    table2 = aggregate({model: [dict(run.data.metrics) for run in found] for model, found in runs.items()})
    all_vectors = vectors({entry.model: entry.metrics for entry in selection.ranked})
    top_means = {model: dict(zip(group["metric"], group["mean"]))
                 for model, group in table2.groupby("model", sort=False)}
    top_vectors = vectors({entry.model: top_means.get(entry.model, {}) for entry in selection.kept})
    predictions = {}
    for entry in selection.kept:
        frame = download_predictions(entry.run_id)
        if frame is None:
            notes.append(f"{entry.model}: screen run has no predictions/test.csv, left out of the significance tests")
        else:
            predictions[entry.model] = frame
    return Results(selection, repeats, runs, table2, correlation(all_vectors), correlation(top_vectors),
                   significance(predictions), notes)


# -- tables as text ------------------------------------------------------------------------------
def fmt(value, digits: int = 4) -> str:
    """A number with fixed digits; — for missing."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "—" if not math.isfinite(number) else f"{number:.{digits}f}"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def ranking_frame(selection: Selection):
    import pandas as pd

    return pd.DataFrame([{**entry.as_json(), "seed": entry.seed} for entry in selection.ranked],
                        columns=["rank", "model", "h", "accuracy", "f1", "specificity", "kept", "seed", "run_id"])


def ranking_markdown(selection: Selection, study_h: dict[str, float] | None = None) -> str:
    """Table A1: rank, model, H and its inputs; kept models in bold (as the study marks its six)."""
    from medfake.models import published as study

    study_h = study.TABLE_A1 if study_h is None else study_h
    ranks = study.study_ranks()
    headers = ["Rank", "Model", "H", "Accuracy", "F1", "Specificity", "Repeated", "Study H (rank)"]
    rows = []
    for entry in selection.ranked:
        name = f"**{entry.model}**" if entry.kept else entry.model
        published = f"{study_h[entry.model]:.4f} ({ranks[entry.model]})" if entry.model in study_h else "—"
        rows.append([entry.rank, name, fmt(entry.h), fmt(entry.accuracy), fmt(entry.f1), fmt(entry.specificity),
                     "yes" if entry.kept else "", published])
    return markdown_table(headers, rows)


def mean_std(mean, std, digits: int = 4) -> str:
    if not math.isfinite(float(mean)):
        return "—"
    return f"{fmt(mean, digits)} ± {fmt(std, digits)}" if math.isfinite(float(std)) else f"{fmt(mean, digits)} ± —"


def table2_markdown(results: Results, with_study: bool = True) -> str:
    """Table 2: mean ± sample std of the six metrics and H over each kept model's runs, study row beside."""
    from medfake.models import published as study

    headers = ["Model", "Runs", *[name.upper() if name in ("auc", "h") else name.capitalize() for name in METRICS]]
    rows = []
    lookup = {(row.model, row.metric): row for row in results.table2.itertuples()}
    for entry in results.selection.kept:
        runs = len(results.runs.get(entry.model, []))
        cells = []
        for name in METRICS:
            row = lookup.get((entry.model, f"test_{name}"))
            cells.append(mean_std(row.mean, row.std) if row is not None else "—")
        rows.append([entry.model, runs, *cells])
        if with_study and entry.model in study.TABLE2:
            published = study.TABLE2[entry.model]
            cells = [mean_std(*published[name]) if name in published else "—" for name in METRICS]
            rows.append(["  study", 3, *cells])
    return markdown_table(headers, rows)


def significance_markdown(frame) -> str:
    headers = ["Model A", "Model B", "Slices", "Only A right", "Only B right", "McNemar p (Holm)", "AUC A", "AUC B",
               "DeLong p (Holm)"]
    rows = [[row.model_a, row.model_b, row.n, row.only_a_right, row.only_b_right,
             f"{fmt(row.mcnemar_p)} ({fmt(row.mcnemar_p_holm)})", fmt(row.auc_a), fmt(row.auc_b),
             f"{fmt(row.delong_p)} ({fmt(row.delong_p_holm)})"] for row in frame.itertuples()]
    return markdown_table(headers, rows)


def log_results(results: Results) -> None:
    """Everything the select run leaves behind: tables as CSV and markdown, heatmaps as PNG."""
    import mlflow

    from medfake.core import plots
    from medfake.core.tracking import artifact_tempdir

    selection = results.selection
    with artifact_tempdir() as tmp:
        folder = Path(tmp)
        ranking_frame(selection).to_csv(folder / "ranking.csv", index=False)
        (folder / "ranking.md").write_text(
            f"H on the {selection.rank_on} split; the {len(selection.kept)} repeated models in bold.\n\n"
            + ranking_markdown(selection))
        results.table2.to_csv(folder / "table2.csv", index=False)
        (folder / "table2.md").write_text(
            f"Test metrics over each model's runs. {STD_NOTE}.\n\n" + table2_markdown(results))
        runs = [(model, run.info.run_id, run.data.tags.get("medfake.stage", ""), tracking.params_of(run).get("seed", ""))
                for model, found in results.runs.items() for run in found]
        import pandas as pd

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


# -- running in the project ------------------------------------------------------------------------
def enter_project(project: str | None) -> str:
    """Make the tracking URI absolute and work in the project folder, as ``mlflow run`` does.

    Launched runs start in the project folder, so relative paths in configs (data, caches) must
    resolve there for the driver too. Default: the current folder if it holds an MLproject, else
    the medfake checkout. The venv's bin folder goes on PATH (launched runs call ``medfake``).
    """
    import mlflow

    uri = use_store()
    for prefix in ("sqlite:///", "file:"):
        if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
            uri = prefix + os.path.abspath(uri[len(prefix):])
    if "://" not in uri and not uri.startswith(("file:", "sqlite:")):
        uri = os.path.abspath(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    bin_dir = os.path.dirname(sys.executable)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    checkout = Path(__file__).resolve().parent.parent
    if project:
        folder = Path(project).resolve()
    else:
        folder = Path.cwd() if (Path.cwd() / "MLproject").is_file() else checkout
    if not (folder / "MLproject").is_file():
        raise UserError(f"no MLproject file in {folder}: run from the medfake project folder or pass --project")
    if folder != Path.cwd().resolve():
        print(f"working in the project folder {folder} (relative config paths resolve there)", file=sys.stderr)
        os.chdir(folder)
    return str(folder)


def parse_backend_config(text: str):
    """``--backend-config``: a JSON file path or a JSON object; empty → None."""
    if not text:
        return None
    if text.endswith(".json"):
        path = Path(text).resolve()
        if not path.is_file():
            raise UserError(f"--backend-config {text}: no such file")
        return str(path)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UserError(f"--backend-config is neither a .json file nor a JSON object ({exc})") from None
    if not isinstance(value, dict):
        raise UserError("--backend-config must be a JSON object")
    return value


def existing_select(experiment: str, selection: Selection, repeats: int):
    """A FINISHED select run over the same screen runs with the same options, or None."""
    query = (f"{_tag_filter(stage=STAGE_SELECT, data_digest=selection.data_digest)} and "
             f"tags.`{TAG_SCREEN_RUNS}` = '{selection.screen_runs_digest()}' "
             f"and params.rank_on = '{selection.rank_on}' and params.top_k = '{selection.top_k}' and params.repeats = '{repeats}'")
    runs = search_runs(experiment, query)
    return runs[0] if runs else None


def select(experiment: str, rank_on: str = "val", top_k: int = 6, repeats: int = 2, parallel: int = 1,
           data_digest: str | None = None, project: str = ".", backend: str = "local", backend_config=None,
           nested: bool = False, say: Callable[[str], None] | None = None, launch: Callable | None = None,
           run_ids: set[str] | None = None) -> Results:
    """Rank, launch/reuse repeats, log the tables in a select run; returns the results.

    ``project`` must already be the working folder (see :func:`enter_project`). Raises
    :class:`RepeatsFailed` (after logging what it could) when launched repeats did not finish.
    """
    import mlflow

    from medfake.core import tracking

    say = say or Progress("select")
    if repeats < 0:
        raise UserError(f"--repeats must be 0 or more, got {repeats}")
    if parallel < 1:
        raise UserError(f"--parallel must be at least 1, got {parallel}")
    digest, runs = screen_runs(experiment, data_digest, run_ids)
    selection = rank_models(runs, rank_on, top_k, experiment, digest)
    for warning in selection.warnings:
        say(f"warning: {warning}")
    say(f"ranked {len(selection.ranked)} screened model(s) by H on {rank_on}; repeating "
        + (", ".join(entry.model for entry in selection.kept) if repeats else "none (--repeats 0)"))
    tags = {tracking.TAG_DATA_DIGEST: digest, TAG_SCREEN_RUNS: selection.screen_runs_digest(),
            "medfake.top_models": ",".join(entry.model for entry in selection.kept)}
    with tracking.run(experiment, f"select-{rank_on}-top{top_k}", STAGE_SELECT, tags=tags, nested=nested) as active:
        tracking.log_params({"rank_on": rank_on, "top_k": top_k, "repeats": repeats, "data_digest": digest,
                             "parallel": parallel, "backend": backend})
        with tracking.artifact_tempdir() as tmp:
            (Path(tmp) / "ranking.md").write_text(ranking_markdown(selection))
            mlflow.log_artifact(str(Path(tmp) / "ranking.md"), "select")
        failures: list[str] = []
        if repeats:
            jobs, warnings = repeat_jobs(selection, repeats, parent=active.info.run_id)
            for warning in warnings:
                say(f"warning: {warning}")
            launcher = launch or (lambda job: launch_train(job, experiment, project, backend, backend_config))
            _, failures = run_jobs(jobs, experiment, parallel, launcher, say, "repeat")
        results = gather(selection, repeats)
        results.select_run_id = active.info.run_id
        log_results(results)
        if failures:
            mlflow.set_tag("medfake.repeats_failed", str(len(failures)))
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
    experiment = experiment_of(args)
    backend_config = parse_backend_config(args.backend_config)
    project = enter_project(args.project or None)
    with output_to_stderr(args.json):
        results = select(experiment, args.rank_on, args.top_k, args.repeats, args.parallel, args.data_digest or None,
                         project, args.backend, backend_config, say=Progress("select", args.quiet))
    if args.json:
        print(json.dumps([entry.as_json() for entry in results.selection.ranked], indent=2))
    else:
        print(f"\nTable A1 — H on {args.rank_on} (repeated models in bold)\n")
        print(ranking_markdown(results.selection))
        if args.repeats:
            print(f"Table 2 — test metrics; {STD_NOTE}\n")
            print(table2_markdown(results))
    return 0
