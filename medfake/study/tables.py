"""The study's tables as markdown (and Table A1 as a frame), with the published numbers beside ours.

Table A1 ranks by H, Table 2 is mean ± sample std over each kept model's runs, and the pairwise
significance table is ours (the study has none). Numbers have fixed digits; — marks a missing one.
"""

from __future__ import annotations

import math

from medfake.core.contract import metric_key
from medfake.models import published as study
from medfake.study.ranking import Selection
from medfake.study.statistics import Results
from medfake.training.metrics import METRICS

STD_NOTE = "± is the sample standard deviation (ddof = 1) over the model's runs; — where there is one run"


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


def mean_std(mean, std, digits: int = 4) -> str:
    if not math.isfinite(float(mean)):
        return "—"
    return f"{fmt(mean, digits)} ± {fmt(std, digits)}" if math.isfinite(float(std)) else f"{fmt(mean, digits)} ± —"


def ranking_frame(selection: Selection):
    import pandas as pd

    return pd.DataFrame([{**entry.as_json(), "seed": entry.seed} for entry in selection.ranked],
                        columns=["rank", "model", "h", "accuracy", "f1", "specificity", "kept", "seed", "run_id"])


def ranking_markdown(selection: Selection, study_h: dict[str, float] | None = None) -> str:
    """Table A1: rank, model, H and its inputs; kept models in bold (as the study marks its six)."""
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


def table2_markdown(results: Results, with_study: bool = True) -> str:
    """Table 2: mean ± sample std of the six metrics and H over each kept model's runs, study row beside."""
    headers = ["Model", "Runs", *[name.upper() if name in ("auc", "h") else name.capitalize() for name in METRICS]]
    rows = []
    lookup = {(row.model, row.metric): row for row in results.table2.itertuples()}
    for entry in results.selection.kept:
        runs = len(results.runs.get(entry.model, []))
        cells = []
        for name in METRICS:
            row = lookup.get((entry.model, metric_key("test", name)))
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
