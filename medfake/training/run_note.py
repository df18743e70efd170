"""The train run's description in the MLflow UI (``mlflow.note.content``): what a reader needs first.

Model, data (phantom or real, digest, split, sizes), the headline test metrics with their
bootstrap CIs, and where to look next — read back from what the run logged, so the note never
disagrees with the metrics table (issue 15: 74 metrics, no description, readers hunted).
"""

from __future__ import annotations

from medfake.core import contract
from medfake.core.config import Config

HEADLINE = ("auc", "h", "accuracy", "recall", "specificity")  # test-split metrics the note leads with


def _metric_line(metrics: dict[str, float], name: str) -> str | None:
    key = contract.metric_key("test", name)
    if key not in metrics:
        return None
    low, high = metrics.get(key + contract.CI_LOW_SUFFIX), metrics.get(key + contract.CI_HIGH_SUFFIX)
    ci = f" (95% CI {low:.3f}–{high:.3f})" if low is not None and high is not None else ""
    return f"| {name} | {metrics[key]:.3f}{ci} |"


def run_note(model: str, seed: int, cfg: Config, digest: str, split_sizes: dict[str, int],
             metrics: dict[str, float]) -> str:
    """The markdown note of one train run."""
    source = cfg.data.source
    lines = [
        f"**{model}**, seed {seed}, experiment `{cfg.experiment}`",
        "",
        f"Data: {source}{' (synthetic phantom, known tamper truth)' if source == 'phantom' else ''}, "
        f"digest `{digest}`, split `{cfg.data.split}`, {cfg.data.image_size} px; "
        + ", ".join(f"{split} {split_sizes.get(split, 0)}" for split in contract.SPLITS) + " slices.",
        "",
        "| test metric | value |",
        "|---|---|",
    ]
    lines += [line for line in (_metric_line(metrics, name) for name in HEADLINE) if line]
    truth = contract.true_key("test", "auc")
    if truth in metrics:
        lines.append(f"| auc vs true extents | {metrics[truth]:.3f} |")
    lines += [
        "",
        "Next: `plots/` (ROC, confusion), `predictions/test.csv` (one row per slice); "
        "compare runs in the table by `test_h`/`test_auc`; `medfake promote` registers the best.",
    ]
    return "\n".join(lines)


def log_run_note(plan, dataset, run_id: str) -> None:
    """Write the note of a finished train run from the metrics it logged."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    metrics = client.get_run(run_id).data.metrics
    sizes = dataset.manifest["split"].value_counts().to_dict()
    note = run_note(plan.model, plan.cfg.seed, plan.cfg, dataset.digest, sizes, metrics)
    client.set_tag(run_id, contract.TAG_NOTE, note)
