"""The ``train`` step: the study's two-phase transfer learning of one backbone (section 4), in MLflow.

Phase 1 trains the head with the backbone frozen (on cached backbone features by default), phase 2
fine-tunes with the backbone unfrozen; each keeps its lowest-validation-loss weights. The run logs
every metric of Tables 1 and 3 and Figures 4 and 7 of the study, with bootstrap CIs, the detector as
an MLflow Keras model, and per-epoch checkpoints so ``--resume RUN_ID`` continues a killed run.
``--model baseline`` trains the histogram floor through the same evaluation.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfake.core import contract, device, tracking
from medfake.core.contract import BASELINE
from medfake.core.config import Config, add_config_arguments, config_from_args
from medfake.data.preprocess import Dataset, ensure_dataset
from medfake.models.grouped_conv import fast_grouped_conv
from medfake.core.errors import UserError
from medfake.training.evaluation import EvalSettings, evaluate_and_log, split_rows, summary_lines
from medfake.training.scan_level import evaluate_scans
from medfake.training.localisation import log_localisation
from medfake.training.model_logging import efficiency_metrics, latency, log_dataset_input, log_detector_model
from medfake.training.run_note import log_run_note
from medfake.training.runtime_check import log_runtime_deltas


CHECKPOINT_ROOT = Path(".medfake") / "checkpoints"
FROM_SCRATCH_BN_MOMENTUM = 0.9


@dataclass
class Plan:
    """What a train run will do, resolved and validated before any work starts."""

    cfg: Config
    model: str               # registry spelling, or "baseline"
    stage: str
    run_name: str


def resolve_plan(model: str, cfg: Config, stage: str) -> Plan:
    """Validate the model name, the size against the registry and the weight average; errors are one line."""
    if model.strip().lower() == BASELINE:
        name = BASELINE
    else:
        from medfake.models.registry import get_backbone

        backbone = get_backbone(model)
        name = backbone.name
        if cfg.data.image_size < backbone.min_size:
            raise UserError(
                f"data.image_size {cfg.data.image_size} is below {name}'s minimum input size {backbone.min_size}"
            )
        _ema_momentum(cfg)
    cfg = cfg.replace(**{"model.backbone": name})
    return Plan(cfg=cfg, model=name, stage=stage, run_name=f"{name}-s{cfg.seed}")


# -- the detector path ---------------------------------------------------------------------
def _seed_everything(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def _compile(model, lr: float, cfg: Config, jit: bool, ema: float = 0.0) -> None:
    import keras

    averaging = {"use_ema": True, "ema_momentum": ema} if ema else {}
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr, beta_1=cfg.train.beta_1, beta_2=cfg.train.beta_2, **averaging),
        loss="binary_crossentropy",
        jit_compile=jit,
    )


def train_detector(plan: Plan, dataset: Dataset, checkpoints, log_epoch, progress: bool = True) -> dict:
    """Both phases on one detector. Returns the model, the resolved choices and timings."""
    from medfake.models import detector as det
    from medfake.training import fitting
    from medfake.models.registry import get_backbone
    from medfake.models.precision import choose
    from medfake.models.weights import resolve_weights

    cfg = plan.cfg
    backbone = get_backbone(plan.model)
    precision, jit = choose(cfg.train.precision, cfg.train.jit_compile, backbone.name)
    weights_value, weights_used = resolve_weights(backbone, cfg.model.weights)
    _seed_everything(cfg.seed)
    model = det.build_detector(
        backbone.name, cfg.data.image_size, weights=weights_value,
        window=(cfg.data.window.center, cfg.data.window.width),
        head_units=cfg.model.head_units, dropout=cfg.model.dropout, precision=precision,
        noise_residual=cfg.model.noise_residual,
    )
    phase2_lr = phase2_rate(cfg, det.has_normalisation(model))
    images = dataset.images
    m = dataset.manifest
    train_rows = m.index[m["split"] == "train"].to_numpy()
    val_rows = m.index[m["split"] == "val"].to_numpy()
    y_train = m.loc[train_rows, "label"].to_numpy(np.float32)
    y_val = m.loc[val_rows, "label"].to_numpy(np.float32)
    batch = cfg.train.batch_size
    recalibration = _recalibration_batches(cfg, train_rows) if weights_value is None else []
    ema = _ema_momentum(cfg)
    timings: dict[str, float] = {}

    # Phase 1: backbone frozen.
    det.set_backbone_trainable(model, None)
    t0 = time.perf_counter()
    if cfg.train.feature_cache:
        extractor = det.feature_extractor(model)
        feats_train = fitting.predict_images(extractor, split_rows(images, train_rows), batch)
        feats_val = fitting.predict_images(extractor, split_rows(images, val_rows), batch)
        timings["feature_cache_seconds"] = time.perf_counter() - t0
        head = det.head_model(backbone.feature_width, cfg.model.head_units, cfg.model.dropout, precision=precision)
        det.copy_head_weights(model, head)
        _compile(head, cfg.train.phase1_lr, cfg, jit)
        trained = head

        def phase1_data(epoch):
            order = fitting.epoch_order(cfg.seed, 1, epoch, len(train_rows))
            return feats_train[order], y_train[order]

        def phase1_val():
            return fitting.predict_images(head, feats_val, max(batch, 256)) if len(feats_val) else np.zeros(0)
    else:
        _compile(model, cfg.train.phase1_lr, cfg, jit)
        trained = model

        def phase1_data(epoch):
            order = fitting.epoch_order(cfg.seed, 1, epoch, len(train_rows))
            return fitting.image_batches(images, train_rows[order], y_train[order], batch), None

        def phase1_val():
            return fitting.predict_images(model, split_rows(images, val_rows), batch)

    if cfg.train.feature_cache:
        # Same batches as the naive fit: x already in epoch order, fit must not reshuffle.
        def phase1_fit_data(epoch):
            x, y = phase1_data(epoch)
            return fitting.array_batches(x, y, batch), None
    else:
        phase1_fit_data = phase1_data
    state1 = fitting.run_phase(
        trained, 1, cfg.train.phase1_epochs, phase1_fit_data, phase1_val, y_val,
        on_epoch=lambda e, logs: log_epoch(1, e, logs), checkpoints=checkpoints, progress=progress,
    )
    if cfg.train.feature_cache:
        det.copy_head_weights(head, model)
    timings["phase1_seconds"] = time.perf_counter() - t0

    # Phase 2: backbone unfrozen (all, or the last fraction of its layers).
    t1 = time.perf_counter()
    state2 = None
    if cfg.train.phase2_epochs > 0:
        # Pretrained BatchNorm stays in inference mode; from scratch it must learn its statistics,
        # fast enough (momentum 0.9, not Keras's 0.99) that validation in inference mode sees them
        # within a short schedule.
        from_scratch = weights_value is None
        det.set_backbone_trainable(model, cfg.train.unfreeze, freeze_batchnorm=not from_scratch)
        if from_scratch:
            det.set_batchnorm_momentum(model, FROM_SCRATCH_BN_MOMENTUM)
        _compile(model, phase2_lr, cfg, jit, ema)

        def phase2_data(epoch):
            order = fitting.epoch_order(cfg.seed, 2, epoch, len(train_rows))
            return fitting.image_batches(images, train_rows[order], y_train[order], batch), None

        def phase2_val():
            if recalibration:
                det.recalibrate_batchnorm(model, (np.asarray(images[rows], np.float32)[..., None]
                                                  for rows in recalibration))
            return fitting.predict_images(model, split_rows(images, val_rows), batch)

        state2 = fitting.run_phase(
            model, 2, cfg.train.phase2_epochs, phase2_data,
            phase2_val, y_val,
            on_epoch=lambda e, logs: log_epoch(2, e, logs), checkpoints=checkpoints, progress=progress,
            average=ema > 0,
        )
    timings["phase2_seconds"] = time.perf_counter() - t1
    epochs2 = state2.epochs_done if state2 else 0
    timings["train_images_per_s"] = (
        len(train_rows) * epochs2 / timings["phase2_seconds"] if epochs2 and timings["phase2_seconds"] > 0 else 0.0
    )
    det.set_backbone_trainable(model, None)
    return {
        "model": model, "precision": precision, "jit": jit, "weights_used": weights_used,
        "phase2_lr": phase2_lr, "timings": timings, "states": [state1, state2],
    }


def phase2_rate(cfg: Config, normalised: bool) -> float:
    """The phase-2 learning rate of a backbone: ``train.phase2_lr``, or ``train.phase2_lr_unnormalised``
    for one without normalisation layers when that is set (study-cpu: VGG19 from random weights)."""
    special = cfg.train.phase2_lr_unnormalised
    rate = cfg.train.phase2_lr if normalised or special is None else special
    if rate <= 0:
        raise UserError(f"the phase-2 learning rate must be > 0, not {rate}")
    return rate


def _ema_momentum(cfg: Config) -> float:
    momentum = cfg.train.ema_momentum
    if not 0 <= momentum < 1:
        raise UserError(f"train.ema_momentum must be in [0, 1), not {momentum}")
    return float(momentum)


def _recalibration_batches(cfg: Config, train_rows: np.ndarray) -> list[np.ndarray]:
    """The training rows whose BatchNorm statistics are measured before each validation
    (``train.bn_recalibration_batches`` batches, the same rows every epoch, sorted for the memmap)."""
    count = cfg.train.bn_recalibration_batches
    if count < 0:
        raise UserError(f"train.bn_recalibration_batches must be ≥ 0, not {count}")
    size = cfg.train.batch_size
    take = min(count * size, len(train_rows))
    chosen = np.random.default_rng([cfg.seed, 2]).choice(train_rows, take, replace=False)
    return [np.sort(chosen[start:start + size]) for start in range(0, take, size)]


# -- the step -------------------------------------------------------------------------------
def train(plan: Plan, data_digest: str | None = None, resume: str | None = None, parent: str | None = None,
          progress: bool = True, *, nested: bool = False, extra_tags: dict | None = None, on_epoch=None) -> str:
    """Run the whole step; returns the MLflow run id.

    A driver in the same process (``tune``) passes ``nested=True`` to open the run under its active
    run, ``extra_tags`` for its own tags, and ``on_epoch(phase, epoch, logs)``, called after each
    epoch is logged; an exception from it (``optuna.TrialPruned``) stops training.
    """
    import mlflow

    from medfake.core import tracking

    cfg = plan.cfg
    dataset, preprocess_run = ensure_dataset(cfg, progress=progress, digest=data_digest or None)
    tags = {
        tracking.TAG_DATA_DIGEST: dataset.digest,
        tracking.TAG_DEVICE: device.device_name(),
        contract.TAG_MODEL: plan.model,
    }
    if preprocess_run:
        tags[contract.TAG_PREPROCESS_RUN] = preprocess_run
    if parent:
        tags["mlflow.parentRunId"] = parent
    tags.update(extra_tags or {})
    with tracking.run(cfg.experiment, plan.run_name, plan.stage, tags=tags, run_id=resume, nested=nested,
                      system_metrics=True) as active:
        run_id = active.info.run_id
        if not resume:
            tracking.log_config(cfg)
            tracking.log_params({"model": plan.model, "seed": cfg.seed, "data_digest": dataset.digest})
            log_dataset_input(dataset)
        summary = {"run_id": run_id, "model": plan.model}
        with tracking.artifact_tempdir() as folder:  # removed with everything in it once logged
            artifacts = Path(folder)
            if plan.model == BASELINE:
                summary |= _train_baseline(plan, dataset, artifacts, progress)
            else:
                summary |= _train_detector_run(plan, dataset, run_id, artifacts, progress, resumed=bool(resume),
                                               on_epoch=on_epoch)
            mlflow.log_artifacts(str(artifacts))
        log_run_note(plan, dataset, run_id)  # the UI's description: model, data, headline metrics
    print_summary(summary, cfg)
    return run_id


def _evaluate(plan: Plan, dataset: Dataset, score_fn, artifacts: Path, embed_fn) -> dict:
    """Every split against labels and truth, then the test scans as whole series (scan's verdict)."""
    import mlflow

    cfg = plan.cfg
    evaluation = evaluate_and_log(dataset, score_fn, EvalSettings.from_config(cfg), artifacts,
                                  title=_title(plan), embed_fn=embed_fn)
    scans = evaluate_scans(cfg, dataset, "test", score_fn, cfg.train.batch_size)
    mlflow.log_metrics(scans)
    return {"splits": evaluation, "scans": scans}


def _train_detector_run(plan: Plan, dataset: Dataset, run_id: str, artifacts: Path, progress: bool, resumed: bool,
                        on_epoch=None) -> dict:
    import mlflow

    from medfake.models import detector as det
    from medfake.training import fitting

    cfg = plan.cfg

    def log_epoch(phase: int, epoch: int, logs: dict) -> None:
        mlflow.log_metrics(
            {f"phase{phase}_{k}": v for k, v in logs.items() if np.isfinite(v)}, step=epoch
        )
        if on_epoch is not None:
            on_epoch(phase, epoch, logs)

    checkpoints = fitting.Checkpoints(CHECKPOINT_ROOT / run_id)
    # The grouped convolutions' fast path covers the fit and the predictions traced for evaluation;
    # the model logging and runtime check below trace their own graphs with Keras's path (export).
    with fast_grouped_conv():
        result = train_detector(plan, dataset, checkpoints, log_epoch, progress)
    model = result["model"]
    if not resumed:
        from medfake.core import tracking

        tracking.log_params({"weights_used": result["weights_used"], "precision_used": result["precision"],
                             "jit_compile_used": result["jit"], "phase2_lr_used": result["phase2_lr"]})
    batch = cfg.train.batch_size

    def score_fn(images):
        return fitting.predict_images(model, images, batch).reshape(-1)

    embedder = det.embedding_model(model)

    def embed_fn(images):
        return fitting.predict_images(embedder, images, batch)

    example = np.asarray(dataset.images[:batch], np.float32)[..., None]
    # The model is logged before the evaluation: MLflow 3 links the metrics a run logs after a
    # logged model (same step) to that model, so the Models view compares detectors by test metrics.
    log_detector_model(model, example[:1])
    with fast_grouped_conv():
        evaluation = _evaluate(plan, dataset, score_fn, artifacts, embed_fn)
    if cfg.eval.explain:  # issue 13: the maps' localisation beside the test metrics
        evaluation["localisation"] = log_localisation(model, dataset, cfg, "test")
    # issue 17: how far each fast runtime/precision moves this detector's test scores (scan reads it)
    if cfg.eval.runtime_check:
        evaluation["runtime_deltas"] = log_runtime_deltas(model, dataset.split("test")[0], batch)
    mean_ms, std_ms = latency(model.predict_on_batch, example, cfg.eval.latency_steps)
    states = [s for s in result["states"] if s is not None]
    efficiency = efficiency_metrics(det.count_params_m(model), mean_ms, std_ms, len(example)) | result["timings"]
    efficiency |= {f"phase{s.phase}_best_epoch": float(s.best_epoch) for s in states}
    efficiency |= {f"phase{s.phase}_best_val_loss": float(s.best_val_loss) for s in states}
    mlflow.log_metrics({k: float(v) for k, v in efficiency.items() if np.isfinite(v)})
    return {"evaluation": evaluation, "efficiency": efficiency, "precision": result["precision"],
            "weights": result["weights_used"]}


def _train_baseline(plan: Plan, dataset: Dataset, artifacts: Path, progress: bool) -> dict:
    import mlflow

    from medfake.models import baseline

    cfg = plan.cfg
    x_train, y_train, _ = dataset.split("train")
    t0 = time.perf_counter()
    model = baseline.fit(x_train[..., 0], y_train, seed=cfg.seed)
    fit_seconds = time.perf_counter() - t0
    from medfake.core import tracking

    tracking.log_params({"weights_used": "none", "precision_used": "float64", "jit_compile_used": False})

    def score_fn(images):
        return baseline.predict(model, np.asarray(images, np.float32))

    evaluation = _evaluate(plan, dataset, score_fn, artifacts, None)
    example = np.asarray(dataset.images[: cfg.train.batch_size], np.float32)
    mean_ms, std_ms = latency(lambda b: baseline.predict(model, b), example, cfg.eval.latency_steps)
    efficiency = efficiency_metrics(baseline.count_params(model) / 1e6, mean_ms, std_ms, len(example))
    efficiency |= {"phase1_seconds": fit_seconds, "phase2_seconds": 0.0}
    mlflow.log_metrics(efficiency)
    baseline.log_model(model, example[:1, ..., None])
    return {"evaluation": evaluation, "efficiency": efficiency, "precision": "float64", "weights": "none"}


def _title(plan: Plan) -> str:
    return f"{plan.model} (seed {plan.cfg.seed})"


def print_summary(summary: dict, cfg: Config) -> None:
    """The end-of-run table: test metrics with CIs (and against the truth), timings, where to look."""
    evaluation = summary["evaluation"]
    print(f"\n{summary['model']} — ", end="")
    print("\n".join(summary_lines(evaluation["splits"], cfg.eval.ci_level, evaluation["scans"])))
    eff = summary["efficiency"]
    print(
        f"  params {eff['params_m']:.2f} M · inference {eff['latency_ms_mean']:.1f} ± {eff['latency_ms_std']:.1f} ms/step"
        f" · phase 1 {eff.get('phase1_seconds', 0):.1f} s · phase 2 {eff.get('phase2_seconds', 0):.1f} s"
        f" · precision {summary['precision']} · weights {summary['weights']}"
    )
    print(f"MLflow run {summary['run_id']} in experiment '{cfg.experiment}' — look at it with `mlflow ui`: "
          f"{tracking.run_ui_url(summary['run_id'])}")


# -- CLI ----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="xception", help="backbone registry name (case-insensitive) or 'baseline'")
    add_config_arguments(parser)
    parser.add_argument("--seed", default="", help="training seed (default: the config's)")
    parser.add_argument("--data", default="", help="dataset digest to train on (default: the config's dataset)")
    parser.add_argument("--stage", default="screen", help="tag medfake.stage: screen, repeat, tune, …")
    parser.add_argument("--resume", default="", metavar="RUN_ID", help="continue an interrupted run from its checkpoints")
    parser.add_argument("--parent-run-id", default="", help="make this run a child of a driver's run")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    extra = {}
    if str(args.seed).strip():
        try:
            extra["seed"] = int(args.seed)
        except ValueError:
            raise UserError(f"--seed '{args.seed}' is not an integer") from None
    cfg = config_from_args(args, extra)
    try:
        plan = resolve_plan(args.model, cfg, args.stage)
    except UserError as exc:
        _fail_launcher_run(str(exc))
        raise
    train(plan, data_digest=args.data or None, resume=args.resume or None,
          parent=args.parent_run_id or None, progress=not args.quiet)
    return 0


def _fail_launcher_run(reason: str) -> None:
    """Under ``mlflow run``, a bad argument still ends the launcher's run FAILED with the reason."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.set_tag(run_id, contract.TAG_FAILURE, reason[:4000])
    client.set_terminated(run_id, "FAILED")

