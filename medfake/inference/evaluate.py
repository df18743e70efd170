"""The ``evaluate`` step: score a logged or registered detector on another dataset config, without retraining.

``--model`` is what ``medfake scan`` takes (a train run id, ``runs:/…``, ``models:/…``, an MLflow
model folder or a model file); ``--data`` names the dataset config (with ``--set`` overrides) and
``--split`` the split to score (default test). The run (stage ``evaluate``) goes to the data
config's experiment, tagged with the source run, the source data digest and the target data
digest, and logs the train step's metric names prefixed by the scored split (``test_auc``,
``test_auc_true`` on the phantom, ``test_recall_fm`` …, with bootstrap CIs), the share of scored
scans the detector trained or validated on (``test_seen_scan_share``: a cross-experiment figure is
one only at 0), ``predictions/{split}.csv`` and the ROC, precision-recall and confusion plots.
The numbers come from :mod:`medfake.training.evaluation`, the code the train step logs with.

``mlflow.models.evaluate`` is not used: its classifier metrics have other names (``roc_auc``,
``f1_score``), and its ROC/PR curves need a scikit-learn ``predict_proba``, which a Keras pyfunc lacks.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfake.core import contract, device, tracking
from medfake.core.config import Config, config_from_args
from medfake.core.errors import UserError
from medfake.data.preprocess import Dataset, ensure_dataset, load_dataset
from medfake.inference import loading
from medfake.training import evaluation
from medfake.training.evaluation import EvalSettings
from medfake.training.scan_level import evaluate_scans

DEFAULT_RUNTIME = "keras"  # the train step's own scores; a deployed runtime agrees within 1e-3


@dataclass
class Source:
    """The detector to evaluate and what is known of the run that trained it."""

    text: str                      # --model as given
    location: str                  # the resolved URI or path
    run_id: str | None             # the train run (None for a bare file or folder)
    data_digest: str | None        # tag medfake.data_digest of that run
    model: str                     # registry spelling (tag medfake.model), else "detector"
    seed: str | None
    input_shape: tuple | None      # (S, S, C) from the logged signature, when there is one


def _run_of(text: str, run_id: str):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient().get_run(run_id)
    except MlflowException:
        raise UserError(f"--model {text}: no run {run_id} in the tracking store") from None


def _signature_shape(info) -> tuple | None:
    try:
        shape = info.signature.inputs.inputs[0].shape
    except AttributeError:
        return None
    if shape is None or len(shape) != 4:
        return None
    return tuple(int(d) if d is not None and d > 0 else 0 for d in shape[1:])


def resolve_source(text: str) -> Source:
    """``--model`` → :class:`Source`; a run without a logged model or an unknown run is one line."""
    from mlflow.tracking import MlflowClient

    text = (text or "").strip()
    if not text:
        raise UserError("--model is required: a train run id, runs:/…, models:/…, or a model file or folder")
    kind, location = loading.resolve_model(text)
    run, shape = None, None
    if kind == "mlflow" and location.startswith("runs:/"):
        run_id, _, artifact = location[len("runs:/"):].partition("/")
        run = _run_of(text, run_id)
        artifact = artifact or "model"
        if not MlflowClient().list_artifacts(run_id, artifact):
            raise UserError(f"--model {text}: run {run_id} ({run.info.run_name}) has no logged model "
                            f"'{artifact}' (stage {run.data.tags.get(contract.TAG_STAGE, '?')}); "
                            "give a finished train run or a models:/ URI")
    if kind == "mlflow":
        info = loading.mlflow_model_info(location)
        shape = _signature_shape(info)
        if run is None and getattr(info, "run_id", None):
            run = _run_of(text, info.run_id)
    tags = run.data.tags if run is not None else {}
    params = tracking.params_of(run) if run is not None else {}
    return Source(text, location, run.info.run_id if run is not None else None, tags.get(contract.TAG_DATA_DIGEST),
                  tags.get(contract.TAG_MODEL) or params.get("model") or "detector", params.get("seed"), shape)


def check_fits(source: Source, input_size: int | None, dataset_size: int, data_ref: str) -> None:
    """The detector's input (S×S, 1 channel) against the data's slices; a mismatch names both."""
    size, channels = input_size, 1
    if source.input_shape is not None:
        size, channels = source.input_shape[0] or input_size, source.input_shape[-1] or 1
    if (size and size != dataset_size) or channels != 1:
        model_text = f"{size}×{size}×{channels}" if size else f"{channels}-channel input"
        raise UserError(f"model {source.text} takes {model_text} slices but data {data_ref} holds "
                        f"{dataset_size}×{dataset_size}×1 slices (set data.image_size={size or dataset_size} "
                        "or evaluate a detector trained at this size)")


def seen_scan_share(source: Source, dataset: Dataset, cfg: Config, rows) -> float | None:
    """Share of the scored scans that the source run's dataset held in its train or val split.

    Needs the source dataset in this working directory's cache (where train left it); None when it
    is not there or the source is unknown.
    """
    if not source.data_digest:
        return None
    if source.data_digest == dataset.digest:
        learned = dataset.manifest
    else:
        try:
            learned = load_dataset(Path(cfg.data.cache_dir) / source.data_digest).manifest
        except UserError:
            return None
    seen = set(learned.loc[learned["split"].isin(("train", "val")), "scan_id"].astype(str))
    scans = set(rows["scan_id"].astype(str))
    return len(scans & seen) / len(scans) if scans else None


def precision_recall_plot(y, scores, path: Path, title: str) -> Path:
    """Precision against recall with the average precision and the fakes' share (a chance detector)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import average_precision_score, precision_recall_curve

    precision, recall, _ = precision_recall_curve(y, scores)
    figure = Figure(figsize=(5.0, 5.0), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(recall, precision, linewidth=1.8, label=f"{title} (AP {average_precision_score(y, scores):.4f})")
    axes.axhline(float(np.mean(y)), linestyle="--", color="grey", linewidth=1, label="chance (share of fakes)")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision", title="Precision-recall curve")
    axes.legend(loc="lower left", fontsize=8)
    axes.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", bbox_inches="tight")
    return path


def _score_fn(scorer: loading.Scorer, batch: int, source: Source, data_ref: str):
    def score(images: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch):
            x = np.asarray(images[start : start + batch], np.float32)[..., None]
            try:
                out.append(np.asarray(scorer.predict(x), np.float64).reshape(-1))
            except ValueError as exc:  # a shape the model's first layer refuses (e.g. 3 channels)
                reason = " ".join(str(exc).split())[:160]
                raise UserError(f"model {source.text} cannot score data {data_ref} "
                                f"({x.shape[1]}×{x.shape[2]}×1 slices): {reason}") from None
        scores = np.concatenate(out) if out else np.zeros(0)
        return np.clip(scores, 0.0, 1.0)  # reduced-precision sigmoid outputs may round a hair past 1

    return score


def evaluate(model: str, cfg: Config, data_ref: str, split: str = "test", data_digest: str | None = None,
             runtime: str = DEFAULT_RUNTIME, precision: str = "auto", progress: bool = True, nested: bool = False) -> str:
    """Score ``split`` of the config's dataset with the detector and log an evaluate run; returns its id.

    ``nested``: open the run under the caller's active run (``paper``'s generalisation step).
    """
    import mlflow

    if split not in contract.SPLITS:
        raise UserError(f"--split must be one of {', '.join(contract.SPLITS)}, got '{split}'")
    tracking.setup(cfg.experiment)
    source = resolve_source(model)
    check_fits(source, None, cfg.data.image_size, data_ref)  # before any data is built
    dataset, preprocess_run = ensure_dataset(cfg, progress=progress, digest=data_digest or None)
    size = int(dataset.info.get("image_size") or dataset.images.shape[1])
    check_fits(source, None, size, data_ref)
    m = dataset.manifest
    rows = m.index[m["split"] == split].to_numpy()
    if not len(rows):
        raise UserError(f"data {data_ref} (dataset {dataset.digest}) has no {split} slices")
    notes = lambda text: print(f"medfake evaluate: note: {text}", file=sys.stderr)  # noqa: E731
    scorer = loading.load_scorer(source.location, runtime=runtime, precision=precision, notes=notes)
    check_fits(source, scorer.input_size, size, data_ref)
    score = _score_fn(scorer, max(cfg.train.batch_size, 1), source, data_ref)

    tags = {contract.TAG_DATA_DIGEST: dataset.digest, contract.TAG_TARGET_DATA_DIGEST: dataset.digest,
            contract.TAG_MODEL: source.model, contract.TAG_DEVICE: device.device_name(),
            contract.TAG_CONFIG_DIGEST: cfg.digest()}
    if source.run_id:
        tags[contract.TAG_SOURCE_RUN] = source.run_id
    if source.data_digest:
        tags[contract.TAG_SOURCE_DATA_DIGEST] = source.data_digest
    if preprocess_run:
        tags[contract.TAG_PREPROCESS_RUN] = preprocess_run
    run_name = f"{source.model}-s{source.seed}-on-{dataset.digest[:8]}" if source.seed else f"{source.model}-on-{dataset.digest[:8]}"
    settings = EvalSettings.from_config(cfg)
    with tracking.run(cfg.experiment, run_name, contract.STAGE_EVALUATE, tags=tags, nested=nested) as active:
        tracking.log_params({"model": source.model, "seed": source.seed, "model_uri": source.text, "data": data_ref,
                             "split": split, "data_digest": dataset.digest, "runtime_used": scorer.name,
                             **{k: v for k, v in cfg.flat().items() if k.startswith(("data.", "eval."))}})
        mlflow.log_text(cfg.to_yaml(), "config.yaml")
        mlflow.log_input(mlflow.data.from_pandas(m, source=str(dataset.path.resolve()), digest=dataset.digest,
                                                 name=f"medfake-{dataset.digest[:8]}", targets="label"),
                         context="evaluation")
        scores = score(evaluation.split_rows(dataset.images, rows))
        result = evaluation.evaluate_split(split, m.loc[rows], scores, settings, with_ci=True)
        if not result.has_truth:
            print(evaluation.TRUTH_ABSENT_NOTE, file=sys.stderr)
        title = source.model
        with tracking.artifact_tempdir() as folder:
            artifacts = Path(folder)
            evaluation.log_split(result, artifacts, title=title)
            prefix = "" if split == "test" else f"{split}_"
            precision_recall_plot(result.predictions["label"].to_numpy(), result.predictions["score"].to_numpy(),
                                  artifacts / "plots" / f"{prefix}precision_recall.png", title)
            mlflow.log_artifacts(str(artifacts))
        seen = seen_scan_share(source, dataset, cfg, m.loc[rows])
        if seen is not None:
            mlflow.log_metric(contract.metric_key(split, contract.SEEN_SCAN_SHARE), seen)
            if seen > 0:
                print(f"medfake evaluate: note: {seen:.0%} of the {split} scans were in the detector's own train/val "
                      "split: not a cross-experiment figure", file=sys.stderr)
        scans = evaluate_scans(cfg, dataset, split, score, max(cfg.train.batch_size, 1))
        mlflow.log_metrics(scans)
        run_id = active.info.run_id
    print("\n".join([f"{source.model} on {data_ref} (dataset {dataset.digest}) — "]
                    + evaluation.summary_lines({split: result}, cfg.eval.ci_level, scans, split=split)))
    print(f"MLflow run {run_id} (stage evaluate) in experiment '{cfg.experiment}'; source run {source.run_id or '—'}")
    return run_id


# -- CLI ----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="train run id, runs:/…, models:/NAME@ALIAS or /VERSION, an MLflow model folder or a model file")
    parser.add_argument("--data", "--config", dest="config", default="quickstart",
                        help="dataset config to score (experiment file or name; default quickstart)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of that config (repeatable; one string may hold several)")
    parser.add_argument("--split", default="test", choices=contract.SPLITS, help="split to score (default test)")
    parser.add_argument("--data-digest", default="", help="a cached dataset digest (default: the config's dataset)")
    parser.add_argument("--runtime", default=DEFAULT_RUNTIME, choices=loading.RUNTIME_CHOICES,
                        help=f"inference runtime (default {DEFAULT_RUNTIME}: the train step's own scores)")
    parser.add_argument("--precision", default="auto", help="runtime precision (default: the model's own)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    evaluate(args.model, cfg, args.config, args.split, args.data_digest or None, args.runtime, args.precision,
             progress=not args.quiet)
    return 0
