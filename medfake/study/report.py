"""The ``report`` step: the study's tables and figures as a README with PNGs, from the tracking store alone.

Tables 1, A1, 2 and 3 with the study's published numbers beside ours, pairwise significance tests,
and Figures 3 (latency), 4 (embedding maps), 5 and 6 (correlation heatmaps), 7 (confusion matrices)
and one ROC plot of all models. The ranking options (split, top k, repeats) and the data digest come
from the newest FINISHED select run unless given. A pure function of the store: nothing is written to
it, rows are sorted, no timestamps — the same store renders the same files.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from medfake.study import ensemble_compare, generalisation, localisation_report
from medfake.core import tracking
from medfake.core.contract import CI_HIGH_SUFFIX, CI_LOW_SUFFIX, STAGE_SELECT, TAG_DATA_DIGEST, TAG_DEVICE, TAG_STAGE, metric_key
from medfake.core.contract import BREAKDOWN_METRICS, LABEL_NOISE, TRUE_SUFFIX
from medfake.core.errors import UserError
from medfake.models import published as study
from medfake.study.ranking import RANK_SPLITS, Selection, rank_models, screen_runs, search_runs, tag_filter, use_store
from medfake.study.select import experiment_of
from medfake.study.statistics import Results, gather
from medfake.study.tables import (
    STD_NOTE,
    fmt,
    markdown_table,
    mean_std,
    ranking_frame,
    ranking_markdown,
    significance_markdown,
    table2_markdown,
)
from medfake.training.metrics import METRICS, STUDY_VECTOR

FIGURES = "figures"
TABLES = "tables"
CONTEXT_PARAMS = (
    "data.source", "data.phantom.scans", "data.phantom.lidc_scans", "data.phantom.size", "data.phantom.slices",
    "data.negatives", "data.split", "data.image_size", "model.weights", "model.noise_residual", "train.phase1_epochs",
    "train.phase2_epochs", "train.batch_size", "train.phase1_lr", "train.phase2_lr", "train.phase2_lr_unnormalised",
    "eval.latency_steps",
)


def _title(name: str) -> str:
    return name.upper() if name in ("auc", "h") else name.capitalize()


def newest_select_run(experiment: str, data_digest: str | None):
    tags = {TAG_STAGE: STAGE_SELECT} | ({TAG_DATA_DIGEST: data_digest} if data_digest else {})
    runs = search_runs(experiment, tag_filter(tags))
    return runs[0] if runs else None


def ranked_run_ids(select_run) -> set[str] | None:
    """The screen runs a select run ranked (its ``select/ranking.csv``), or None for "newest per model"."""
    import pandas as pd

    if select_run is None:
        return None
    with tracking.artifact_tempdir() as tmp:
        path = _download(select_run.info.run_id, "select/ranking.csv", Path(tmp))
        return set(pd.read_csv(path, dtype={"run_id": str})["run_id"]) if path is not None else None


def _int_param(run, key: str, default: int) -> int:
    try:
        return int(run.data.params.get(key, default))
    except (TypeError, ValueError):
        return default


def _download(run_id: str, artifact: str, folder: Path) -> Path | None:
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=str(folder)))
    except Exception:  # noqa: BLE001 - a run without this artifact is left out of the figure
        return None


# -- tables ---------------------------------------------------------------------------------------
def table1_frame(selection: Selection):
    """Every screened model's test metrics with their bootstrap CIs (Table 1), by model name."""
    import pandas as pd

    rows = []
    for entry in sorted(selection.ranked, key=lambda e: e.model):
        row = {"model": entry.model, "run_id": entry.run_id}
        for name in (*METRICS, *TRUTH_COLUMNS, *BREAKDOWN_METRICS):  # truth, breakdown: NaN where absent
            for suffix in ("", CI_LOW_SUFFIX, CI_HIGH_SUFFIX):
                row[f"{name}{suffix}"] = entry.metrics.get(metric_key("test", f"{name}{suffix}"), math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


# Table 1's second part (issue 12): against the phantom's true tamper extents, and per tamper type.
TRUTH_COLUMNS = (f"auc{TRUE_SUFFIX}", f"recall{TRUE_SUFFIX}", f"specificity{TRUE_SUFFIX}", f"h{TRUE_SUFFIX}", LABEL_NOISE)
_COLUMN_TITLES = {"auc": "AUC (±radius labels)", "auc_true": "AUC (true)", "recall_true": "Recall (true)",
                  "specificity_true": "Specificity (true)", "h_true": "H (true)", "label_noise": "Label noise", "recall_fm": "Recall FM (injected)",
                  "recall_fb": "Recall FB (removed)", "fpr_tm": "FPR TM (real cancer)", "fpr_tb": "FPR TB",
                  "fpr_lidc": "FPR LIDC"}


def table1_truth_markdown(frame) -> str | None:
    """AUC against the ±radius labels beside the truth metrics (phantom only) and the FM/FB/TM/TB/LIDC
    breakdown, with CIs; columns no run has are left out, None when none has any."""
    names = [n for n in ("auc", *TRUTH_COLUMNS, *BREAKDOWN_METRICS)
             if n in frame.columns and frame[n].notna().any()]
    if len(names) <= 1:
        return None
    rows = []
    for row in frame.to_dict("records"):
        cells = []
        for name in names:
            low, high = row.get(f"{name}{CI_LOW_SUFFIX}", math.nan), row.get(f"{name}{CI_HIGH_SUFFIX}", math.nan)
            interval = f" [{fmt(low, 3)}, {fmt(high, 3)}]" if math.isfinite(low) and math.isfinite(high) else ""
            cells.append(fmt(row[name], 3) + interval)
        rows.append([row["model"], *cells])
    return markdown_table(["Model", *[_COLUMN_TITLES[n] for n in names]], rows)


def table1_markdown(frame) -> str:
    headers = ["Model", "", *[_title(name) for name in STUDY_VECTOR]]
    rows = []
    for row in frame.to_dict("records"):
        cells = []
        for name in STUDY_VECTOR:
            value, low, high = row[name], row[f"{name}{CI_LOW_SUFFIX}"], row[f"{name}{CI_HIGH_SUFFIX}"]
            interval = f" [{fmt(low, 3)}, {fmt(high, 3)}]" if math.isfinite(low) and math.isfinite(high) else ""
            cells.append(fmt(value) + interval)
        rows.append([row["model"], "ours", *cells])
        if row["model"] in study.TABLE1:
            rows.append(["", "study", *[fmt(study.TABLE1[row["model"]][name]) for name in STUDY_VECTOR]])
    return markdown_table(headers, rows)


def table3_frame(selection: Selection, runs_by_id: dict):
    import pandas as pd

    rows = []
    for entry in sorted(selection.ranked, key=lambda e: e.model):
        run = runs_by_id[entry.run_id]
        published = study.TABLE3.get(entry.model, {})
        rows.append({
            "model": entry.model,
            "params_m": entry.metrics.get("params_m", math.nan),
            "latency_ms_mean": entry.metrics.get("latency_ms_mean", math.nan),
            "latency_ms_std": entry.metrics.get("latency_ms_std", math.nan),
            "inference_images_per_s": entry.metrics.get("inference_images_per_s", math.nan),
            "train_seconds": entry.metrics.get("phase1_seconds", math.nan)
            + entry.metrics.get("phase2_seconds", math.nan),
            "precision": run.data.params.get("precision_used", ""),
            "device": run.data.tags.get(TAG_DEVICE, ""),
            "study_params_m": published.get("params_m", math.nan),
            "study_latency_ms_mean": published.get("latency_ms_mean", math.nan),
            "study_latency_ms_std": published.get("latency_ms_std", math.nan),
        })
    return pd.DataFrame(rows)


def table3_markdown(frame) -> str:
    several_devices = frame["device"].nunique() > 1
    headers = ["Model", "Params (M)", "Study params (M)", "Inference step (ms)", "Study step (ms)", "Precision",
               "Train time (s)"] + (["Device"] if several_devices else [])
    rows = []
    for row in frame.to_dict("records"):
        cells = [row["model"], fmt(row["params_m"], 2), fmt(row["study_params_m"], 1),
                 mean_std(row["latency_ms_mean"], row["latency_ms_std"], 1),
                 mean_std(row["study_latency_ms_mean"], row["study_latency_ms_std"], 1),
                 row["precision"] or "—", fmt(row["train_seconds"], 0)]
        rows.append(cells + ([row["device"]] if several_devices else []))
    return markdown_table(headers, rows)


def setup_markdown(params: dict[str, str], devices: list[str]) -> str:
    """Our run settings beside the study's (section 4)."""
    get = params.get
    if get("data.source") == "phantom":
        data = (f"synthetic CT phantom: {get('data.phantom.scans', '?')} tampered + {get('data.phantom.lidc_scans', '?')} "
                f"clean scans of {get('data.phantom.slices', '?')} slices at {get('data.phantom.size', '?')}²")
    else:
        data = "CT-GAN + LIDC-IDRI (real data)"
    # A backbone without normalisation layers may fine-tune at a rate of its own (study-cpu: VGG19).
    own_rate = get("train.phase2_lr_unnormalised")
    unnormalised = f" (phase 2 without normalisation layers: {own_rate})" if own_rate not in (None, "", "None", "?") else ""
    # model.noise_residual (quickstart): channels 2-3 a fixed Laplacian instead of the study's grey ×3.
    residual = ", grey + noise residual ×2" if str(get("model.noise_residual", "")).lower() == "true" else ", grey ×3"
    rows = [
        ["Data", data, "CT-GAN tampered slices ± 5 + as many LIDC-IDRI slices (2,486)"],
        ["Negatives / split", f"{get('data.negatives', '?')} / {get('data.split', '?')}", "lidc_random / random (slice level)"],
        ["Input", f"{get('data.image_size', '?')}²{residual}", "512², grey ×3"],
        ["Weights", get("model.weights", "?"), "imagenet"],
        ["Epochs (frozen + unfrozen)", f"{get('train.phase1_epochs', '?')} + {get('train.phase2_epochs', '?')}", "80 + 20"],
        ["Learning rates", f"{get('train.phase1_lr', '?')} / {get('train.phase2_lr', '?')}{unnormalised}", "1e-4 / 1e-5"],
        ["Batch", get("train.batch_size", "?"), "8"],
        ["Device", "; ".join(devices) or "—", study.DEVICE],
    ]
    return markdown_table(["", "ours", "study"], rows)


# -- figures --------------------------------------------------------------------------------------
def render_figures(selection: Selection, results: Results, table3, out: Path, scratch: Path) -> dict[str, str]:
    """Write the figures; returns figure key → path relative to ``out`` (only those drawn)."""
    import pandas as pd

    from medfake.core import plots

    figures = out / FIGURES
    drawn: dict[str, str] = {}

    def keep(key: str, path: Path) -> None:
        drawn[key] = path.relative_to(out).as_posix()

    timed = table3[table3["latency_ms_mean"].notna()]
    if len(timed):
        keep("latency", plots.latency_bars(list(timed["model"]), timed["latency_ms_mean"],
                                           timed["latency_ms_std"].fillna(0.0), figures / "figure3_latency.png",
                                           "Inference step time (Fig. 3)"))
    by_name = sorted(selection.ranked, key=lambda e: e.model)
    for method in ("tsne", "pca"):
        images, titles = [], []
        for entry in by_name:
            path = _download(entry.run_id, f"plots/embedding_{method}.png", scratch / entry.run_id)
            if path is not None:
                images.append(path)
                titles.append(entry.model)
        if images:
            keep(f"embedding_{method}", plots.grid(images, figures / f"figure4_embedding_{method}.png", titles))
    for key, matrix, title, name in (
        ("correlation_all", results.correlation_all, "Pearson correlation, all screened models (Fig. 5)",
         "figure5_correlation_all.png"),
        ("correlation_top", results.correlation_top, f"Pearson correlation, top {len(selection.kept)} (Fig. 6)",
         "figure6_correlation_top.png"),
    ):
        if len(matrix):
            keep(key, plots.correlation_heatmap(matrix, figures / name, title))
    matrices = []
    for entry in by_name:  # redrawn from the logged counts, each titled with its model
        counts = [entry.metrics.get(metric_key("test", k), math.nan) for k in ("tp", "fp", "tn", "fn")]
        if all(math.isfinite(c) for c in counts):
            matrices.append(plots.confusion_matrix_plot(*(int(c) for c in counts), scratch / f"cm_{entry.model}.png",
                                                        entry.model))
    if matrices:
        keep("confusion", plots.grid(matrices, figures / "figure7_confusion_matrices.png"))
    curves = {}
    for entry in by_name:
        path = _download(entry.run_id, "predictions/test.csv", scratch / f"pred_{entry.run_id}")
        if path is not None:
            frame = pd.read_csv(path)
            if frame["label"].nunique() == 2:
                curves[entry.model] = (frame["label"].to_numpy(), frame["score"].to_numpy())
    if curves:
        keep("roc", plots.roc_plot(curves, figures / "roc_all_models.png", "ROC curves of all screened models (test set)"))
    return drawn


# -- the report -------------------------------------------------------------------------------------
def _clear(out: Path) -> None:
    """Remove what an earlier report wrote (only its own files), so stale figures do not linger."""
    for folder, suffix in ((out / FIGURES, ".png"), (out / TABLES, ".csv")):
        if folder.is_dir():
            for path in folder.glob(f"*{suffix}"):
                path.unlink()


def render(experiment: str, out: Path, data_digest: str | None = None, rank_on: str | None = None,
           top_k: int | None = None, repeats: int | None = None, select_run_id: str | None = None) -> Path:
    """Write ``out/README.md`` with the tables, ``out/figures/*.png`` and ``out/tables/*.csv``.

    The ranking follows ``select_run_id`` (or the newest FINISHED select run): its screen runs and options.
    """
    from mlflow.tracking import MlflowClient

    use_store()
    select_run = MlflowClient().get_run(select_run_id) if select_run_id else newest_select_run(experiment, data_digest)
    if select_run is not None:
        data_digest = data_digest or select_run.data.tags.get(TAG_DATA_DIGEST)
        rank_on = rank_on or select_run.data.params.get("rank_on", "val")
        top_k = top_k or _int_param(select_run, "top_k", 6)
        repeats = _int_param(select_run, "repeats", 2) if repeats is None else repeats
    rank_on, top_k, repeats = rank_on or "val", top_k or 6, 2 if repeats is None else repeats
    digest, runs = screen_runs(experiment, data_digest, ranked_run_ids(select_run))
    selection = rank_models(runs, rank_on, top_k, experiment, digest)
    results = gather(selection, repeats)
    runs_by_id = {run.info.run_id: run for run in runs}
    client = MlflowClient()
    for found in results.runs.values():
        for run in found:
            runs_by_id.setdefault(run.info.run_id, client.get_run(run.info.run_id))

    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    tables = out / TABLES
    tables.mkdir(exist_ok=True)
    table1 = localisation_report.with_columns(table1_frame(selection), selection)  # issue 13's columns
    table3 = table3_frame(selection, runs_by_id)
    ensembles = ensemble_compare.newest_ensembles(experiment, selection.data_digest)
    table1 = ensemble_compare.with_ensemble_rows(table1, ensembles, "table1")
    table3 = ensemble_compare.with_ensemble_rows(table3, ensembles, "table3")
    table1.to_csv(tables / "table1.csv", index=False)
    ranking_frame(selection).to_csv(tables / "table_a1.csv", index=False)
    results.table2.to_csv(tables / "table2.csv", index=False)
    table3.to_csv(tables / "table3.csv", index=False)
    generalised = generalisation.write_section([(e.model, runs_by_id[e.run_id]) for e in selection.ranked], tables)
    results.correlation_all.to_csv(tables / "correlation_all.csv")
    results.correlation_top.to_csv(tables / "correlation_top.csv")
    results.significance.to_csv(tables / "significance.csv", index=False)
    with tracking.artifact_tempdir() as tmp:
        figures = render_figures(selection, results, table3, out, Path(tmp))

    reference = runs_by_id[selection.ranked[0].run_id]
    reference_params = tracking.params_of(reference)
    params = {key: reference_params.get(key, "?") for key in CONTEXT_PARAMS}
    with tracking.artifact_tempdir() as tmp:
        localised = localisation_report.section(table1, selection, out / FIGURES, Path(tmp), reference_params, _download)
    devices = sorted({run.data.tags.get(TAG_DEVICE, "") for run in runs_by_id.values()} - {""})
    text = readme(experiment, selection, results, table1, table3, params, devices, figures,
                  select_run.info.run_id if select_run is not None else None, generalised,
                  ensemble_compare.report_section(ensembles), localised)
    (out / "README.md").write_text(text)
    return out / "README.md"


def readme(experiment, selection, results, table1, table3, params, devices, figures, select_run_id,
           generalised: str = "", ensembled: str = "", localised: str = "") -> str:
    synthetic = params.get("data.source") == "phantom"
    kept = len(selection.kept)
    lines = [f"# Study reproduction: experiment `{experiment}`", ""]
    if synthetic:
        lines += [
            "> **Synthetic data.** Every number here comes from the medfake CT phantom (simulated scans with "
            "simulated tampering), not from CT-GAN / LIDC-IDRI. It shows the study's pipeline running end to end "
            "(screen 13 backbones, rank by H, repeat the best, compare) — it says nothing about how well these "
            "detectors find real CT-GAN tampering. The study's published numbers are shown beside ours for the "
            "layout only; they are not comparable.", "",
        ]
    lines += [
        f"Rendered by `medfake report` from the MLflow tracking store: data digest `{selection.data_digest}`, "
        f"{len(selection.ranked)} screened model(s), ranking on the **{selection.rank_on}** split, top {kept} "
        f"repeated {results.repeats} more time(s)"
        + (f" (select run `{select_run_id}`)" if select_run_id else " (no select run found: defaults)") + ". "
        "The same store renders the same files.", "",
        "## Setup", "", setup_markdown(params, devices),
        f"Study: {study.SETUP}. Source of the published numbers: {study.SOURCE}.", "",
        "## Table 1 — every screened model, one run (test set)", "",
        "Ours with 95 % bootstrap intervals (stratified, from the train step); the study's Table 1 below each model.", "",
        table1_markdown(table1),
        *(["### Table 1, continued — against the true tamper extents and per tamper type (test set)", "",
           "Truth columns (phantom only) score every slice by whether it was truly tampered, not by the study's "
           "±radius labels; label noise = share of ±radius fakes not truly tampered. Recall FM/FB: fakes of that "
           "tamper type found; FPR: real slices of that kind called fake (TM = real cancer).", "",
           table1_truth_markdown(table1)] if table1_truth_markdown(table1) else []),
        *([localised] if localised else []),
        *([ensembled] if ensembled else []),
        f"## Table A1 — H = harmonic mean of accuracy, F1 and specificity ({selection.rank_on} split)", "",
        f"The {kept} repeated backbones are in bold (the study marked its six best, chosen on test metrics). "
        "The baseline is ranked as the floor but never repeated.", "",
        ranking_markdown(selection),
        f"## Table 2 — top {kept}, mean ± std over their runs (test set)", "",
        f"{STD_NOTE}. Runs = the screen run + the repeats found (seeds screen seed + 1 … + {results.repeats}). "
        f"The study's rows: three runs, std kind {study.STD_KIND}.", "",
        table2_markdown(results),
        "## Table 3 — parameters and inference step time", "",
        f"Ours: mean ± std of {params.get('eval.latency_steps', '?')} timed steps after warm-up at the run's batch size, on "
        f"{'; '.join(devices) or 'the device of each run'}; train time = phase 1 + phase 2 seconds. "
        f"Study: {study.DEVICE}.", "",
        table3_markdown(table3),
        f"## Pairwise significance — top {kept} (test set)", "",
        "Not in the study. McNemar's test on the predicted labels (exact binomial below 25 discordant slices) and "
        "DeLong's test on the AUCs of each pair's screen runs; Holm-adjusted p in brackets.", "",
        (significance_markdown(results.significance) if len(results.significance)
         else "Fewer than two models with predictions.\n"),
        *([generalised] if generalised else []),
        "## Figures", "",
    ]
    captions = [
        ("latency", "Figure 3 — inference step time per model, mean ± std"),
        ("embedding_tsne", "Figure 4 — t-SNE of the 256-d penultimate-layer embeddings (test set; × = misclassified)"),
        ("embedding_pca", "Figure 4 (PCA) — the same embeddings projected by PCA"),
        ("correlation_all",
         "Figure 5 — Pearson correlation of the metric vectors [acc, prec, rec, spec, F1, AUC], all screened models"),
        ("correlation_top", f"Figure 6 — the same for the top {kept}, over their mean metrics"),
        ("confusion", "Figure 7 — test-set confusion matrices"),
        ("roc", "ROC curves of all screened models on the test set"),
    ]
    for key, caption in captions:
        if key in figures:
            lines += [f"### {caption}", "", f"![{caption}]({figures[key]})", ""]
    if results.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in results.notes] + [""]
    lines += ["## Files", "", f"Tables as CSV under `{TABLES}/`, figures under `{FIGURES}/`.", ""]
    return "\n".join(lines)


# -- CLI ----------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from medfake.core.config import add_config_arguments

    parser.add_argument("--experiment", default="", help="MLflow experiment (default: the config's)")
    add_config_arguments(parser)
    parser.add_argument("--out", default="", help="output folder (default reports/<experiment>)")
    parser.add_argument("--data-digest", default="", help="data digest (default: the newest select run's)")
    parser.add_argument("--rank-on", choices=RANK_SPLITS, default=None,
                        help="default: the newest select run's, else val")
    parser.add_argument("--top-k", type=int, default=None, help="default: the newest select run's, else 6")
    parser.add_argument("--repeats", type=int, default=None, help="default: the newest select run's, else 2")


def run(args: argparse.Namespace) -> int:
    experiment = experiment_of(args)
    out = Path(args.out or Path("reports") / experiment)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    path = render(experiment, out, args.data_digest or None, args.rank_on, args.top_k, args.repeats)
    print(f"report written to {path}")
    return 0

