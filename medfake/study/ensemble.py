"""The ``ensemble`` step: the study's "hybrid architecture" — the top models as one detector.

The study's discussion proposes combining DCNNs that capture different semantics, and its Figures
5-6 show the top models' metric vectors correlated but not identical. This step takes the best
``--top-k`` backbones of a finished ``select`` (by the H ranking select used; default the newest
select of the config's data digest) or of ``--runs``, loads their logged detectors and makes one
Keras model of them (:mod:`medfake.models.ensemble`) with a ``--combiner``:

- ``mean``: the average probability; ``logit-mean``: sigmoid of the average logit;
- ``stacking``: a logistic regression on the members' logits fitted on the VALIDATION split only —
  the test split stays untouched until the ensemble is scored on it, as for any detector.

The run (stage ``ensemble``) logs what a train run logs — metrics of every split, test CIs, truth
metrics and breakdowns, scan-level metrics, predictions, the model in the Keras flavour (so
``promote``, ``mlflow models serve`` and ``scan`` take it like any detector) — plus the members'
run ids (tags), sizes and latencies beside the ensemble's, and whether it beats its best member on
test: AUC difference with DeLong's p-value, McNemar's p at the decision threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from medfake.core import contract, device, tracking
from medfake.core.config import Config, add_config_arguments, config_from_args
from medfake.core.errors import UserError
from medfake.data.preprocess import Dataset, dataset_digest, ensure_dataset, resolve_inputs
from medfake.study.ensemble_compare import (
    compare_with_best,
    efficiency_table,
    fit_stacking,
    measure,
    member_metrics,
    sigmoid,
    verdict_sentence,
)
from medfake.study.ranking import model_of, rank_models, search_runs, tag_filter
from medfake.training.evaluation import EvalSettings, evaluate_and_log, split_rows, summary_lines
from medfake.training.fitting import predict_images
from medfake.training.model_logging import efficiency_metrics, log_dataset_input, log_detector_model
from medfake.training.scan_level import evaluate_scans

RANKING_ARTIFACT = "select/ranking.csv"


# -- choosing the members -------------------------------------------------------------------------
def latest_select(experiment: str, data_digest: str):
    """The newest FINISHED select run of the data digest; one line when there is none."""
    runs = search_runs(experiment, tag_filter({contract.TAG_STAGE: contract.STAGE_SELECT,
                                               contract.TAG_DATA_DIGEST: data_digest}))
    if not runs:
        raise UserError(f"no FINISHED select run with data digest {data_digest} in '{experiment}': "
                        "run `medfake select` first, or name the members with --runs")
    return runs[0]


def get_runs(run_ids: list[str]) -> list:
    """The runs of ``--runs``, FINISHED and holding a detector (not the histogram baseline)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    tracking.use_store()
    client, runs = MlflowClient(), []
    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise UserError(f"--runs: no run {run_id} in {tracking.tracking_uri()}") from None
        if run.info.status != "FINISHED":
            raise UserError(f"--runs: run {run_id} is {run.info.status}, not FINISHED")
        if model_of(run) == contract.BASELINE:
            raise UserError(f"--runs: run {run_id} is the HU-histogram baseline, not a Keras detector to combine")
        runs.append(run)
    return runs


def select_ranking(select_run) -> tuple[list, str]:
    """(the screen runs a select run ranked, its ranking split) from its ``select/ranking.csv``."""
    import mlflow
    import pandas as pd

    with tracking.artifact_tempdir() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=select_run.info.run_id,
                                                       artifact_path=RANKING_ARTIFACT, dst_path=tmp)
        except Exception:  # noqa: BLE001 - any missing artifact is the same user-facing problem
            raise UserError(f"select run {select_run.info.run_id} has no {RANKING_ARTIFACT}; "
                            "run `medfake select` again") from None
        ids = pd.read_csv(path, dtype={"run_id": str})["run_id"].tolist()
    rank_on = tracking.params_of(select_run).get("rank_on", "val")
    ranked = [run for run in get_runs_lenient(ids) if model_of(run) != contract.BASELINE]
    return ranked, rank_on


def get_runs_lenient(run_ids: list[str]) -> list:
    """Those of the runs that still exist (a ranked run may have been deleted since)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client, runs = MlflowClient(), []
    for run_id in run_ids:
        try:
            runs.append(client.get_run(run_id))
        except MlflowException:
            continue
    return runs


def top_members(runs: list, rank_on: str, k: int, say=None) -> list:
    """The first ``k`` backbones of the H ranking (select's own :func:`rank_models`), best first."""
    selection = rank_models(runs, rank_on, k)
    for warning in selection.warnings:
        (say or _stderr)(f"warning: {warning}")
    by_id = {run.info.run_id: run for run in runs}
    members = [by_id[entry.run_id] for entry in selection.ranked if entry.kept]
    if len(members) < 2:
        raise UserError(f"an ensemble needs at least 2 ranked detectors, found {len(members)} "
                        f"({', '.join(model_of(run) for run in members) or 'none'})")
    return members


def check_members(runs: list) -> tuple[str, int]:
    """(data digest, input size) the members share; a mismatch is one line naming both."""
    def described(run) -> tuple[str, str, str]:
        params = tracking.params_of(run)
        digest = run.data.tags.get(contract.TAG_DATA_DIGEST) or params.get("data_digest", "")
        return f"{model_of(run)} ({run.info.run_id})", digest, params.get("data.image_size", "")

    first, digest, size = described(runs[0])
    for run in runs[1:]:
        other, other_digest, other_size = described(run)
        if other_digest != digest:
            raise UserError(f"members differ in data digest: {first} has {digest or 'none'}, "
                            f"{other} has {other_digest or 'none'}; combine detectors of one dataset")
        if other_size != size:
            raise UserError(f"members differ in input size: {first} takes {size or '?'} px, "
                            f"{other} takes {other_size or '?'} px")
    try:
        return digest, int(size)
    except ValueError:
        raise UserError(f"member {first} logged no integer data.image_size param") from None


# -- the step ---------------------------------------------------------------------------------------
def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def model_label(combiner: str, names: list[str]) -> str:
    """The ensemble's ``model`` param and tag, e.g. ``ensemble-mean:DenseNet121+VGG19``."""
    return f"ensemble-{combiner}:{'+'.join(names)}"


def load_member(run):
    """A member's logged detector (MLflow Keras flavour), uncompiled."""
    from mlflow.exceptions import MlflowException

    from medfake.core import logged_models

    try:
        return logged_models.load_keras(f"runs:/{run.info.run_id}/model")
    except (MlflowException, OSError) as exc:
        raise UserError(f"member {model_of(run)} ({run.info.run_id}) has no loadable Keras model "
                        f"({' '.join(str(exc).split())[:160]})") from None


def split_logits(models: list, dataset: Dataset, split: str, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, members' logits rows × members) of one split, rows in manifest order."""
    m = dataset.manifest
    rows = m.index[m["split"] == split].to_numpy()
    images = split_rows(dataset.images, rows)
    logits = np.column_stack([predict_images(model, images, batch).reshape(-1) for model in models])
    return m.loc[rows, "label"].to_numpy(np.int64), logits.astype(np.float64)


def existing_ensemble(experiment: str, member_ids: list[str], combiner: str, data_digest: str):
    """A FINISHED ensemble run of these members (in this order) and combiner, or None (paper's reuse)."""
    return tracking.find_finished_run(
        experiment, stage=contract.STAGE_ENSEMBLE,
        tags={contract.TAG_ENSEMBLE_MEMBERS: ",".join(member_ids), contract.TAG_DATA_DIGEST: data_digest},
        params={"combiner": combiner})


def ensemble(cfg: Config, members: list, combiner: str, select_run_id: str = "", latency_runtime: str = "auto",
             nested: bool = False, progress: bool = True) -> str:
    """Combine the member runs into one detector, evaluate and log it; returns the run id."""
    import mlflow

    from medfake.models import detector as det
    from medfake.models import ensemble as ens

    if combiner not in contract.ENSEMBLE_COMBINERS:
        raise UserError(f"--combiner must be one of {', '.join(contract.ENSEMBLE_COMBINERS)}, got '{combiner}'")
    digest, size = check_members(members)
    dataset, preprocess_run = ensure_dataset(cfg, progress=progress, digest=digest)
    if int(dataset.info.get("image_size", size)) != size:
        raise UserError(f"dataset {digest} holds {dataset.info['image_size']} px slices, the members take {size} px")
    names = [model_of(run) for run in members]
    ids = [run.info.run_id for run in members]
    label = model_label(combiner, names)
    cfg = cfg.replace(**{"model.backbone": label})
    tags = {contract.TAG_DATA_DIGEST: digest, contract.TAG_DEVICE: device.device_name(), contract.TAG_MODEL: label,
            contract.TAG_ENSEMBLE_MEMBERS: ",".join(ids)}
    if select_run_id:
        tags[contract.TAG_ENSEMBLE_SELECT_RUN] = select_run_id
    if preprocess_run:
        tags[contract.TAG_PREPROCESS_RUN] = preprocess_run
    run_name = f"Ensemble-{combiner}-k{len(members)}-s{cfg.seed}"
    with tracking.run(cfg.experiment, run_name, contract.STAGE_ENSEMBLE, tags=tags, nested=nested) as active, \
            tracking.artifact_tempdir() as tmp:
        artifacts = Path(tmp)
        tracking.log_config(cfg)
        tracking.log_params({"model": label, "seed": cfg.seed, "data_digest": digest, "combiner": combiner,
                             "members": "+".join(names), "k": len(members)})
        log_dataset_input(dataset)
        detectors = [load_member(run) for run in members]
        model = ens.build_ensemble(detectors, names, combiner, name=f"medfake_ensemble_{combiner.replace('-', '_')}")
        logit_models = ens.member_logit_models(model)
        batch = cfg.train.batch_size
        stacking = None
        if combiner == "stacking":
            val_labels, val_logits = split_logits(logit_models, dataset, "val", batch)
            weights, bias = fit_stacking(val_logits, val_labels)
            ens.set_stacking(model, weights, bias)
            stacking = {"weights": weights.tolist(), "bias": bias, "members": names, "fitted_on": "val",
                        "val_slices": int(val_labels.size)}
            tracking.log_params({"stacking_weights": json.dumps([float(f"{w:.9g}") for w in weights]),
                                 "stacking_bias": f"{bias:.9g}"})

        def score_fn(images):
            return predict_images(model, images, batch).reshape(-1)

        splits = evaluate_and_log(dataset, score_fn, EvalSettings.from_config(cfg), artifacts, title=label)
        scans = evaluate_scans(cfg, dataset, "test", score_fn, batch)
        mlflow.log_metrics(scans)
        test_labels, test_logits = split_logits(logit_models, dataset, "test", batch)
        member_scores = sigmoid(test_logits)
        ensemble_scores = splits["test"].predictions["score"].to_numpy(np.float64)
        comparison = compare_with_best(test_labels, ensemble_scores, member_scores, names, ids, cfg.eval.threshold)
        mlflow.log_metrics(comparison.metrics())
        mlflow.set_tag(contract.TAG_ENSEMBLE_BEST_MEMBER, comparison.best_run_id)
        example = np.asarray(dataset.images[:batch], np.float32)[..., None]
        speed = measure(model, detectors, example, cfg.eval.latency_steps, latency_runtime)
        efficiency = efficiency_metrics(det.count_params_m(model), *speed.keras[0], len(example))
        table = efficiency_table(label, names, ids, test_labels, ensemble_scores, member_scores,
                                 [model, *detectors], speed, cfg.eval.threshold)
        mlflow.log_metrics({k: float(v) for k, v in efficiency.items() if np.isfinite(v)}
                           | member_metrics(table) | speed.runtime_metrics())
        sentence = verdict_sentence(comparison.delta, comparison.delong_p, comparison.mcnemar_p, comparison.best_model)
        folder = artifacts / "ensemble"
        folder.mkdir()
        table.to_csv(folder / "members.csv", index=False)
        (folder / "comparison.md").write_text(f"{sentence}\n\nEnsemble test AUC {comparison.ensemble_auc:.4f}; "
                                              f"best member {comparison.best_model} ({comparison.best_run_id}) "
                                              f"{comparison.best_auc:.4f}.\n")
        if stacking is not None:
            (folder / "stacking.json").write_text(json.dumps(stacking, indent=2))
        log_detector_model(model, example[:1])
        mlflow.log_artifacts(str(artifacts))
        run_id = active.info.run_id
    print(f"\n{label} — " + "\n".join(summary_lines(splits, cfg.eval.ci_level, scans)))
    print(f"  params {efficiency['params_m']:.2f} M · inference {efficiency['latency_ms_mean']:.1f} ± "
          f"{efficiency['latency_ms_std']:.1f} ms/step ({len(example)} slices, members beside it in ensemble/members.csv)")
    print(f"  {sentence}")
    print(f"MLflow run {run_id} in experiment '{cfg.experiment}'")
    return run_id


def members_for(cfg: Config, runs_text: str, select_run_id: str, data_digest: str, k: int,
                experiment: str) -> tuple[list, str]:
    """(members best first, the select run they came from or '') for the CLI and ``paper``."""
    if runs_text.strip():
        ids = [part.strip() for part in runs_text.split(",") if part.strip()]
        if len(set(ids)) != len(ids):
            raise UserError(f"--runs names a run twice: {runs_text}")
        runs = get_runs(ids)
        return top_members(runs, "val", min(k, len(runs))), ""
    if select_run_id:
        select_run = get_runs_lenient([select_run_id])
        if not select_run or select_run[0].data.tags.get(contract.TAG_STAGE) != contract.STAGE_SELECT:
            raise UserError(f"--select-run {select_run_id}: no select run with that id")
        select_run = select_run[0]
    else:
        digest = data_digest or dataset_digest(cfg, resolve_inputs(cfg, progress=False))
        select_run = latest_select(experiment, digest)
    ranked, rank_on = select_ranking(select_run)
    return top_members(ranked, rank_on, k), select_run.info.run_id


def paper_ensemble(cfg: Config, select_run_id: str, say, quiet: bool = False) -> str | None:
    """``paper``'s ensemble step (config ``study.ensemble``): the top ``study.ensemble_top_k`` of the
    select run, combined by ``study.ensemble_combiner``; a finished ensemble of the same members and
    combiner is reused. Fewer than two ranked backbones: said, and skipped. Returns the run id."""
    if not cfg.study.ensemble:
        return None
    combiner = cfg.study.ensemble_combiner
    try:
        members, _ = members_for(cfg, "", select_run_id, "", cfg.study.ensemble_top_k, cfg.experiment)
    except UserError as exc:
        say(f"ensemble: skipped ({exc})")
        return None
    ids = [run.info.run_id for run in members]
    previous = existing_ensemble(cfg.experiment, ids, combiner, check_members(members)[0])
    if previous is not None:
        say(f"ensemble: reusing finished ensemble run {previous.info.run_id} ({combiner} of {len(ids)} members)")
        return previous.info.run_id
    say(f"ensemble: {combiner} of {', '.join(model_of(run) for run in members)}")
    return ensemble(cfg, members, combiner, select_run_id, nested=True, progress=not quiet)


# -- CLI ------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--experiment", default="", help="MLflow experiment (default: the config's)")
    parser.add_argument("--data-digest", default="", help="use the newest select run of this data digest "
                                                          "(default: the config's dataset)")
    parser.add_argument("--select-run", default="", help="take the members from this select run")
    parser.add_argument("--runs", default="", help="comma-separated run ids to rank and combine instead of a select run")
    parser.add_argument("--top-k", default="", help="members: the best k of the ranking (default: the config's "
                                                    "study.ensemble_top_k, 3)")
    parser.add_argument("--combiner", default="", help=f"{' | '.join(contract.ENSEMBLE_COMBINERS)} "
                                                       "(default: the config's study.ensemble_combiner)")
    parser.add_argument("--latency-runtime", default="auto", choices=("auto", "keras"),
                        help="also time the fastest installed runtime (auto, default) or Keras only")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _top_k(text: str, default: int) -> int:
    if not str(text).strip():
        return default
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"--top-k '{text}' is not an integer") from None
    if value < 2:
        raise UserError(f"--top-k must be at least 2 (an ensemble of one is its member), got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.experiment:
        cfg = cfg.replace(experiment=args.experiment)
    k = _top_k(args.top_k, cfg.study.ensemble_top_k)
    combiner = args.combiner or cfg.study.ensemble_combiner
    if combiner not in contract.ENSEMBLE_COMBINERS:
        raise UserError(f"--combiner must be one of {', '.join(contract.ENSEMBLE_COMBINERS)}, got '{combiner}'")
    members, select_run_id = members_for(cfg, args.runs, args.select_run, args.data_digest, k, cfg.experiment)
    ensemble(cfg, members, combiner, select_run_id, args.latency_runtime, progress=not args.quiet)
    return 0
