"""The names other parts, scripts and the MLflow UI rely on, defined once (DESIGN.md section 5).

Changing a string here changes the contract: every tag, stage, metric key, label type and
registry name is read from this module, never retyped.
"""

from __future__ import annotations

# -- runs and tags -------------------------------------------------------------------------
TAG_PREFIX = "medfake."
TAG_STAGE = "medfake.stage"
TAG_DATA_DIGEST = "medfake.data_digest"
TAG_CONFIG_DIGEST = "medfake.config_digest"
TAG_FAILURE = "medfake.failure"
TAG_DEVICE = "medfake.device"
TAG_MODEL = "medfake.model"
TAG_RESOLVED_PREFIX = "medfake.resolved."
TAG_PREPROCESS_RUN = "medfake.preprocess_run"
TAG_REDIRECTED_TO = "medfake.redirected_to"
TAG_SCREEN_RUNS = "medfake.screen_runs_digest"
TAG_TOP_MODELS = "medfake.top_models"
TAG_REPEATS_FAILED = "medfake.repeats_failed"
TAG_TRIAL = "medfake.trial"
TAG_PRUNED = "medfake.pruned"
TAG_PRUNED_AT = "medfake.pruned_at"
TAG_BEST_TRIAL = "medfake.best_trial"
TAG_BEST_RUN = "medfake.best_run"
TAG_STUDY = "medfake.study"  # the Optuna study a tune run belongs to
# evaluate runs: which detector scored which data (the run's own data digest is the target's)
TAG_SOURCE_RUN = "medfake.source_run"
TAG_SOURCE_DATA_DIGEST = "medfake.source_data_digest"
TAG_TARGET_DATA_DIGEST = "medfake.target_data_digest"
# evaluate's `{split}_` metric: share of the scored scans the source detector trained or validated on
# (a cross-experiment figure is only that when this is 0)
SEEN_SCAN_SHARE = "seen_scan_share"

# -- stages (tag medfake.stage) ------------------------------------------------------------
STAGE_PREPROCESS = "preprocess"
STAGE_SCREEN = "screen"
STAGE_REPEAT = "repeat"
STAGE_TUNE = "tune"
STAGE_SELECT = "select"
STAGE_PAPER = "paper"
STAGE_EVALUATE = "evaluate"
STAGE_EXPLAIN = "explain"
STAGE_ENSEMBLE = "ensemble"
# ensemble runs: the member runs (comma-separated, in member order), the select run they came from,
# and the member the ensemble is compared with (highest test AUC)
TAG_ENSEMBLE_MEMBERS = "medfake.ensemble_members"
TAG_ENSEMBLE_SELECT_RUN = "medfake.ensemble_select_run"
TAG_ENSEMBLE_BEST_MEMBER = "medfake.ensemble_best_member"
# ensemble's `test_` metrics against its best member: AUC difference, DeLong p, McNemar p at the threshold
AUC_DELTA_VS_BEST = "auc_delta_vs_best_member"
DELONG_P_VS_BEST = "delong_p_vs_best_member"
MCNEMAR_P_VS_BEST = "mcnemar_p_vs_best_member"
ENSEMBLE_COMBINERS = ("mean", "logit-mean", "stacking")  # `medfake ensemble --combiner`, config study.ensemble_combiner

# -- models and registry -------------------------------------------------------------------
BASELINE = "baseline"  # the HU-histogram floor, trained by `medfake train --model baseline`
REGISTERED_MODEL = "medfake-detector"
CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow 3.17's UI opens an experiment on its GenAI overview whatever the kind tag says; this query
# (inside the URL's #fragment) opens the runs table in the "Model training" layout, checked in
# headless Chromium by tests/core/test_ui_browser.py.
UI_WORKFLOW_QUERY = "workflowType=machine_learning"
UI_DEFAULT_URL = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store
TAG_RUN_NAME = "mlflow.runName"  # the name the UI shows; set on runs `mlflow run` launched
TAG_NOTE = "mlflow.note.content"  # the run's markdown description in the UI
TAG_HEARTBEAT = "medfake.heartbeat"  # unix seconds, rewritten while the run's process lives
TAG_PROCESS = "medfake.process"  # host:pid of the process that runs it (to tell a dead one)

# Each trained detector's max |Δp| against its Keras float32 scores on its test slices, per
# runtime-precision (issue 17), e.g. ``max_abs_dp/openvino-bfloat16``. scan's default precision
# ("checked") runs reduced precision only where this is at most the tolerance.
RUNTIME_DELTA_PREFIX = "max_abs_dp/"
REDUCED_PRECISION_TOLERANCE = 0.01


def runtime_delta_key(runtime_name: str) -> str:
    """``max_abs_dp/<runtime>-<precision>``, e.g. ``max_abs_dp/openvino-bfloat16``."""
    return f"{RUNTIME_DELTA_PREFIX}{runtime_name}"


# -- metric keys: {split}_{metric} ---------------------------------------------------------
SPLITS = ("train", "val", "test")
METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auc", "h")
TRUE_SUFFIX = "_true"  # measured against the phantom's true tamper extents
CI_LOW_SUFFIX = "_ci_low"
CI_HIGH_SUFFIX = "_ci_high"


def metric_key(split: str, metric: str) -> str:
    """``{split}_{metric}``, the key every step logs and every reader looks up (e.g. ``val_h``)."""
    return f"{split}_{metric}"


def true_key(split: str, metric: str) -> str:
    """``{split}_{metric}_true``: the metric against the phantom's true tamper extents."""
    return f"{split}_{metric}{TRUE_SUFFIX}"


def ci_keys(key: str) -> tuple[str, str]:
    """The ``_ci_low`` / ``_ci_high`` keys of a logged metric key (e.g. ``test_auc_true``)."""
    return f"{key}{CI_LOW_SUFFIX}", f"{key}{CI_HIGH_SUFFIX}"


# Breakdowns (after the `{split}_` prefix; issue 12): recall over the fakes of one tamper type, and
# the share of real slices of one kind called fake. Absent where a split holds none of that kind.
RECALL_BY_TYPE = {"recall_fm": "FM", "recall_fb": "FB"}
FPR_BY_TYPE = {"fpr_tm": "TM", "fpr_tb": "TB"}
FPR_LIDC = "fpr_lidc"  # LIDC negatives (manifest source `lidc`) called fake
BREAKDOWN_METRICS = (*RECALL_BY_TYPE, *FPR_BY_TYPE, FPR_LIDC)
SOURCE_CTGAN = "ctgan"
SOURCE_LIDC = "lidc"
LABEL_NOISE = "label_noise"  # share of ±radius-labelled fakes not truly tampered (phantom only)
# AUC of the phantom's truth itself against the ±radius labels: the most any detector can reach
# on that split, since a labelled-fake slice the tamper never touched looks like a real one.
AUC_CEILING = "auc_ceiling"
# Series-level metrics of a split grouped by scan (same verdict rule as `medfake scan`).
SCAN_METRICS = ("scan_auc", "scan_detection_rate", "scan_false_alarm_rate", "scan_z_iou")
SCAN_GROUPED_SPLITS = ("by_scan", "by_experiment")  # data.split values that keep a scan in one split

# Localisation of the maps against the known tamper position (issue 13): `{split}_{method}_{metric}`.
SALIENCY_METHODS = ("cam", "occlusion")
LOCALISATION_METRICS = (
    "hit_rate",                 # pointing game: the map's peak within r of the tamper centre
    "energy",                   # share of the map's positive mass within r of the centre
    "hit_rate_chance",          # analytic: the disc's share of the image (a uniformly random peak)
    "hit_rate_shuffled",        # empirical: truth positions shuffled among the same slices
    "energy_shuffled",
    "hit_rate_fm",              # injected tampers only
    "hit_rate_fb",              # removed tampers only
    "randomisation_spearman",   # trained vs re-initialised maps (Adebayo et al. 2018); near 0 is good
    "mapped",                   # positioned slices this method mapped and scored (occlusion: a seeded sample)
    "randomisation_slices",     # slices the randomisation check mapped again with fresh weights
    "patch",                    # occlusion: patch side = stride in input pixels (the tamper's diameter, ≥ S/8)
)
LOCALISATION_SCORED = "localisation_scored"          # slices with a known position (after `{split}_`)
LOCALISATION_UNPOSITIONED = "localisation_unpositioned"  # fakes without one: counted, never misses


def localisation_key(split: str, method: str, metric: str) -> str:
    """``{split}_{method}_{metric}``, e.g. ``test_cam_hit_rate``, ``val_occlusion_energy``."""
    if method not in SALIENCY_METHODS or metric not in LOCALISATION_METRICS:
        raise ValueError(f"unknown localisation metric {method}_{metric}")
    return f"{split}_{method}_{metric}"


# -- CT-GAN label types (labels_exp*.csv column `type`) -------------------------------------
LABEL_TYPES = {
    "TB": "true benign: no cancer there, untouched",
    "TM": "true malign: real cancer, untouched",
    "FB": "false benign: real cancer removed (tampered)",
    "FM": "false malign: fake cancer injected (tampered)",
}
TAMPERED_TYPES = frozenset({"FB", "FM"})
LIDC_LABEL_TYPE = "LIDC"  # negatives drawn from LIDC-IDRI carry no CT-GAN label

# -- dataset predictions -------------------------------------------------------------------
PREDICTION_COLUMNS = ("scan_id", "source", "slice", "label", "label_type", "truly_tampered", "score", "predicted")
