"""Split a train run's test AUC against the study's ±radius labels into its two kinds of positives.

AUC is the mean over positives of the fraction of negatives each one outranks, so against the ±5 labels

    AUC = (1 - n) · AUC(truly tampered vs real) + n · AUC(untouched ±5 slice vs real)

with n the share of labelled fakes the tamper never touched (`test_label_noise`). It says which part
limits a detector: missed tampers, or the untouched neighbours no slice-level detector can see.

    python reports/auc_decomposition.py mlruns/<exp>/<run id>/artifacts/predictions/test.csv [...]

Reads the `predictions/test.csv` artifact of a phantom run (columns label, truly_tampered,
label_type, score).
"""

import sys

import pandas as pd
from sklearn.metrics import roc_auc_score


def _auc(positives: pd.DataFrame, negatives: pd.DataFrame) -> float:
    both = pd.concat([positives, negatives])
    return float(roc_auc_score(both["label"], both["score"]))


def decompose(path: str) -> str:
    rows = pd.read_csv(path)
    real = rows[rows["label"] == 0]
    fakes = rows[rows["label"] == 1]
    tampered = fakes[fakes["truly_tampered"] == 1]
    untouched = fakes[fakes["truly_tampered"] == 0]
    share = len(untouched) / len(fakes)
    lines = [
        f"{path}",
        f"  AUC(labels) {roc_auc_score(rows['label'], rows['score']):.4f}"
        f" = {1 - share:.3f} × AUC(tampered vs real) {_auc(tampered, real):.4f}"
        f" + {share:.3f} × AUC(untouched ±radius vs real) {_auc(untouched, real):.4f}"
        f"  ({len(tampered)} tampered, {len(untouched)} untouched, {len(real)} real slices)",
    ]
    for kind in sorted(tampered["label_type"].unique()):
        part = tampered[tampered["label_type"] == kind]
        lines.append(f"  tampered {kind}: {len(part)} slices, AUC vs real {_auc(part, real):.4f},"
                     f" {(part['score'] < 0.5).sum()} scored below 0.5")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print("\n".join(decompose(path) for path in sys.argv[1:]))
