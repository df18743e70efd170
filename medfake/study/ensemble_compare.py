"""The ensemble against its members: the combiners' maths, the stacking fit (validation
only), the test comparison with the best member, and size and latency beside the members'.

Pure numpy/scipy/sklearn apart from the timing, so the maths is checked against the Keras model's
outputs (:mod:`medfake.models.ensemble`) and ``report`` reads the same verdict sentence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfake.core import contract, device
from medfake.core.errors import UserError
from medfake.training import metrics as mt

ALPHA = 0.05  # "better" = higher test AUC than the best member with DeLong p below this


# -- combining ------------------------------------------------------------------------------------
def sigmoid(z) -> np.ndarray:
    from scipy.special import expit

    return expit(np.asarray(z, np.float64))


def combine(logits: np.ndarray, combiner: str, weights=None, bias: float = 0.0) -> np.ndarray:
    """P(fake) per row from the members' logits (rows × members): the ensemble model's maths in numpy."""
    z = np.asarray(logits, np.float64)
    if combiner == "mean":
        return sigmoid(z).mean(axis=1)
    if combiner == "logit-mean":
        return sigmoid(z.mean(axis=1))
    if combiner == "stacking":
        return sigmoid(z @ np.asarray(weights, np.float64).reshape(-1) + float(bias))
    raise UserError(f"--combiner must be one of {', '.join(contract.ENSEMBLE_COMBINERS)}, got '{combiner}'")


def fit_stacking(val_logits: np.ndarray, val_labels: np.ndarray) -> tuple[np.ndarray, float]:
    """Logistic regression (L2, C = 1) of the validation labels on the members' validation logits.

    Takes the validation split only, by signature: the caller has nothing of the test split here.
    """
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(val_labels, np.int64)
    if np.unique(labels).size < 2:
        raise UserError("stacking needs both classes in the validation split; use --combiner mean")
    fitted = LogisticRegression(C=1.0, max_iter=1000).fit(np.asarray(val_logits, np.float64), labels)
    return fitted.coef_.reshape(-1).astype(np.float64), float(fitted.intercept_[0])


@dataclass
class Comparison:
    """The ensemble against its best member (highest test AUC) on the test split."""

    best_model: str
    best_run_id: str
    ensemble_auc: float
    best_auc: float
    delong_p: float
    mcnemar_p: float

    @property
    def delta(self) -> float:
        return self.ensemble_auc - self.best_auc

    @property
    def better(self) -> bool:
        return self.delta > 0 and math.isfinite(self.delong_p) and self.delong_p < ALPHA

    def metrics(self) -> dict[str, float]:
        values = {contract.AUC_DELTA_VS_BEST: self.delta, contract.DELONG_P_VS_BEST: self.delong_p,
                  contract.MCNEMAR_P_VS_BEST: self.mcnemar_p}
        return {contract.metric_key("test", k): float(v) for k, v in values.items() if math.isfinite(v)}


def verdict_sentence(delta: float, delong_p: float, mcnemar_p: float, best_model: str) -> str:
    """One plain sentence: is the ensemble better than its best member on test?"""
    p = f"DeLong p = {delong_p:.3g}" if math.isfinite(delong_p) else "DeLong p undefined"
    mc = f", McNemar p = {mcnemar_p:.3g}" if math.isfinite(mcnemar_p) else ""
    if not math.isfinite(delta):
        return f"Not compared: the test split cannot rank slices for {best_model} or the ensemble."
    if delta > 0 and math.isfinite(delong_p) and delong_p < ALPHA:
        return f"Better: test AUC {delta:+.4f} over the best member {best_model} ({p}{mc})."
    if delta > 0:
        return (f"Not better: test AUC {delta:+.4f} over the best member {best_model}, "
                f"within chance ({p} ≥ {ALPHA}{mc}).")
    return f"Not better: test AUC {delta:+.4f} against the best member {best_model} ({p}{mc})."


def compare_with_best(labels, ensemble_scores, member_scores: np.ndarray, names: list[str], run_ids: list[str],
                      threshold: float) -> Comparison:
    """AUC difference, DeLong and McNemar (at ``threshold``) against the member of highest test AUC."""
    y = np.asarray(labels, np.int64)
    ensemble_scores = np.asarray(ensemble_scores, np.float64)
    aucs = [float(mt.rank_auc(y, member_scores[:, i])) for i in range(member_scores.shape[1])]
    best = int(np.nanargmax(aucs)) if np.isfinite(aucs).any() else 0
    try:
        ensemble_auc, best_auc, _, delong_p = mt.delong_auc_test(y, ensemble_scores, member_scores[:, best])
    except ValueError:  # fewer than two slices of a class: no test, the AUCs alone
        ensemble_auc, best_auc, delong_p = float(mt.rank_auc(y, ensemble_scores)), aucs[best], math.nan
    _, mcnemar_p = mt.mcnemar(y, mt.predict_labels(ensemble_scores, threshold),
                              mt.predict_labels(member_scores[:, best], threshold))
    return Comparison(names[best], run_ids[best], float(ensemble_auc), float(best_auc), float(delong_p),
                      float(mcnemar_p))


# -- size and speed beside the members' (study Table 3) ----------------------------------------------
@dataclass
class Speed:
    """ms per inference step (mean, std): the ensemble first, then each member, taking turns."""

    keras: list[tuple[float, float]]
    runtime: str = ""                                  # the fastest installed runtime, "" = Keras only
    fast: list[tuple[float, float]] | None = None      # the same rows on that runtime

    def runtime_metrics(self) -> dict[str, float]:
        if not self.runtime:
            return {}
        mean, std = self.fast[0]
        return {f"{self.runtime}_latency_ms_mean": mean, f"{self.runtime}_latency_ms_std": std}


def _timed(predict_fns: list, batch: np.ndarray, steps: int) -> list[tuple[float, float]]:
    # Taking turns (device.interleaved_step_times_ms) exposes the ensemble and its members to the
    # same load on shared cores, so "k members cost ~k steps" is read from one table fairly.
    times = device.interleaved_step_times_ms(predict_fns, batch, steps, warmup=2)
    return [(float(t.mean()), float(t.std(ddof=1)) if steps > 1 else 0.0) for t in times]


def measure(model, detectors: list, example: np.ndarray, steps: int, latency_runtime: str) -> Speed:
    """Keras latency of the ensemble and its members; with ``auto`` also on the fastest installed runtime."""
    import tempfile

    speed = Speed(_timed([model.predict_on_batch, *(d.predict_on_batch for d in detectors)], example, steps))
    if latency_runtime != "auto":
        return speed
    from medfake.models import runtime as rt

    chosen = rt.available_runtimes()[0]
    if chosen == "keras":
        return speed
    with tempfile.TemporaryDirectory(prefix="medfake-ensemble-export-") as folder:
        loaded = [rt.load_runtime(rt.export_detector(m, Path(folder) / str(i), (chosen,))[chosen], precision="float32")
                  for i, m in enumerate([model, *detectors])]
        speed.runtime, speed.fast = chosen, _timed([runtime.predict for runtime in loaded], example, steps)
    return speed


def efficiency_table(label: str, names: list[str], ids: list[str], labels, ensemble_scores, member_scores,
                     models: list, speed: Speed, threshold: float):
    """One row for the ensemble, then one per member: test AUC and H, size, latency (Keras, runtime)."""
    import pandas as pd

    rows = []
    columns = [ensemble_scores, *member_scores.T]
    for index, (name, run_id, scores, model) in enumerate(zip([label, *names], ["", *ids], columns, models)):
        values = mt.binary_metrics(labels, scores, threshold)
        row = {"member": index, "model": name, "run_id": run_id, "test_auc": values["auc"], "test_h": values["h"],
               "params_m": model.count_params() / 1e6, "latency_ms_mean": speed.keras[index][0],
               "latency_ms_std": speed.keras[index][1]}
        if speed.runtime:
            row |= {f"{speed.runtime}_latency_ms_mean": speed.fast[index][0],
                    f"{speed.runtime}_latency_ms_std": speed.fast[index][1]}
        rows.append(row)
    return pd.DataFrame(rows)


def member_metrics(table) -> dict[str, float]:
    """``member_<i>_<column>`` for every member row (i = 1 … k, best ranked first)."""
    out = {}
    for row in table[table["member"] > 0].to_dict("records"):
        for key, value in row.items():
            if key not in ("member", "model", "run_id") and isinstance(value, (int, float)) and math.isfinite(value):
                out[f"member_{row['member']}_{key}"] = float(value)
    return out


# -- the report's rows (Table 1, Table 3) and its plain answer ------------------------------------
def newest_ensembles(experiment: str, data_digest: str) -> list:
    """The newest FINISHED ensemble run per model label (combiner and members) of the data digest."""
    from medfake.study.ranking import model_of, search_runs, tag_filter

    runs = search_runs(experiment, tag_filter({contract.TAG_STAGE: contract.STAGE_ENSEMBLE,
                                               contract.TAG_DATA_DIGEST: data_digest}))
    newest: dict[str, object] = {}
    for run in runs:  # newest first
        newest.setdefault(model_of(run), run)
    return [newest[label] for label in sorted(newest)]


def with_ensemble_rows(frame, runs: list, table: str):
    """Table 1's or Table 3's frame with one row per ensemble run appended, from its logged metrics.

    Table 1's columns are test metric names (``auc``, ``auc_ci_low`` …); Table 3's are the train
    run's efficiency metrics, with the device tag; what an ensemble has no value for stays empty.
    """
    import pandas as pd

    from medfake.study.ranking import model_of

    rows = []
    for run in runs:
        metrics = run.data.metrics
        row: dict[str, object] = {"model": model_of(run)}
        for column in frame.columns:
            if column == "model":
                continue
            if table == "table1":
                row[column] = run.info.run_id if column == "run_id" else metrics.get(contract.metric_key("test", column), math.nan)
            elif column == "device":
                row[column] = run.data.tags.get(contract.TAG_DEVICE, "")
            elif column == "precision":
                row[column] = ""
            else:
                row[column] = metrics.get(column, math.nan)
        rows.append(row)
    return pd.concat([frame, pd.DataFrame(rows, columns=frame.columns)], ignore_index=True) if rows else frame


def report_section(runs: list) -> str:
    """Markdown: for every ensemble, one plain sentence on whether it beats its best member (test set)."""
    if not runs:
        return ""
    from medfake.study.ranking import model_of

    lines = ["### The ensemble against its best member (test set)", "",
             "Not in the study (its discussion proposes such hybrids). The ensemble's row is in Tables 1 and 3; "
             f"\"better\" means a higher test AUC than its best member with DeLong p < {ALPHA}. McNemar's test "
             "compares the predicted labels at the decision threshold. Stacking was fitted on the validation "
             "split only.", ""]
    for run in runs:
        m = run.data.metrics
        delta, delong, mcnemar = (m.get(contract.metric_key("test", key), math.nan) for key in
                                  (contract.AUC_DELTA_VS_BEST, contract.DELONG_P_VS_BEST, contract.MCNEMAR_P_VS_BEST))
        best = run.data.tags.get(contract.TAG_ENSEMBLE_BEST_MEMBER, "")
        members = model_of(run).split(":", 1)[-1].split("+")
        ids = run.data.tags.get(contract.TAG_ENSEMBLE_MEMBERS, "").split(",")
        best_model = dict(zip(ids, members)).get(best, best or "?")
        lines.append(f"- **{model_of(run)}**: {verdict_sentence(delta, delong, mcnemar, best_model)}")
    return "\n".join(lines) + "\n"
