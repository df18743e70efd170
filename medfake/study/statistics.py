"""The study's comparisons: Table 2 (mean ± sample std over runs), Figures 5 and 6 (Pearson
correlation of metric vectors, eq. 2) and pairwise McNemar / DeLong tests, which the study lacks.

:func:`gather` collects each kept model's finished runs from the store (its screen run and the
repeats of the planned seeds) and computes all of them for one :class:`~medfake.study.ranking.Selection`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medfake.core import tracking
from medfake.core.contract import STAGE_REPEAT, TAG_CONFIG_DIGEST, TAG_DATA_DIGEST, TAG_MODEL, metric_key
from medfake.study.ranking import Selection, screen_config
from medfake.training.metrics import STUDY_VECTOR


# -- aggregation (Table 2), correlation (Figs. 5, 6), significance ----------------------------
def aggregate(metrics_by_model: dict[str, list[dict[str, float]]], split: str = "test"):
    """Mean and sample std (ddof = 1) of every ``{split}_*`` metric over each model's runs.

    Long format: columns model, metric, n (runs with that metric), mean, std (NaN for one run).
    """
    import pandas as pd

    prefix = metric_key(split, "")
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


def vectors(metrics_by_model: dict[str, dict[str, float]], split: str = "test"):
    """Models × STUDY_VECTOR table of the study's metric vector; models lacking a value are left out."""
    import pandas as pd

    rows = {}
    for model, values in metrics_by_model.items():
        vector = [values.get(metric_key(split, name), math.nan) for name in STUDY_VECTOR]
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

    with tracking.artifact_tempdir() as tmp:
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
    """Collect each kept model's finished runs (screen + repeats of the planned seeds) and compute the tables.

    A repeat counts when its config digest is the screen run's config with the repeat's seed; a
    screen run without ``config.yaml`` matches repeats on model, seed and data digest only.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    notes = list(selection.warnings)
    runs: dict[str, list] = {}
    for entry in selection.kept:
        found = [client.get_run(entry.run_id)]
        cfg = screen_config(entry.run_id) if repeats else None
        for offset in range(1, repeats + 1):
            seed = entry.seed + offset
            tags = {TAG_MODEL: entry.model, TAG_DATA_DIGEST: selection.data_digest}
            if cfg is not None:
                tags[TAG_CONFIG_DIGEST] = cfg.replace(seed=seed).digest()
            run = tracking.find_finished_run(selection.experiment, stage=STAGE_REPEAT, tags=tags, params={"seed": seed})
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
