"""The study's published numbers (seed paper, Tables 1, 2, 3 and A1), as data.

Reports print them beside ours; tests check our maths against them (H of Table 1 gives Table A1,
the six best by H are the six the study repeated). Metric keys follow ``medfake.training.metrics.METRICS``.
The study does not say whether its ± in Tables 2 and 3 is a sample or a population std.
"""

from __future__ import annotations

SOURCE = "seed/000_2fba49d31df83b2d.txt (Tables 1, 2, 3, A1)"
#: How the study's numbers were produced (section 4), for captions beside ours.
SETUP = (
    "CT-GAN + LIDC-IDRI slices (2,486; random LIDC negatives, slice-level random split), 512×512, "
    "ImageNet weights, 80 + 20 epochs at batch 8, NVIDIA T4 GPU (Google Colab)"
)
DEVICE = "NVIDIA T4 GPU (Google Colab), 512×512, batch 8"
STD_KIND = "not stated in the study"
TABLE_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auc")

_TABLE1_ROWS = """
ConvNeXtTiny      0.9544 0.9444 0.9605 0.9490 0.9524 0.9968
DenseNet121       0.9678 0.9412 0.9944 0.9439 0.9671 0.9988
DenseNet169       0.9786 0.9669 0.9887 0.9694 0.9777 0.9985
DenseNet201       0.9571 0.9448 0.9661 0.9490 0.9553 0.9971
EfficientNetB4    0.9678 0.9661 0.9661 0.9694 0.9661 0.9980
EfficientNetV2S   0.9678 0.9609 0.9718 0.9643 0.9663 0.9980
InceptionV3       0.9517 0.9344 0.9661 0.9388 0.9500 0.9968
MobileNetV3Large  0.9598 0.9451 0.9718 0.9490 0.9583 0.9975
RegNetX040        0.9491 0.9593 0.9322 0.9643 0.9456 0.9949
RegNetY040        0.9544 0.9348 0.9718 0.9388 0.9529 0.9945
ResNet50V2        0.9732 0.9883 0.9548 0.9898 0.9713 0.9982
VGG19             0.9517 0.9492 0.9492 0.9541 0.9492 0.9964
Xception          0.9651 0.9659 0.9605 0.9694 0.9632 0.9977
"""

# mean, std pairs in TABLE_METRICS order (Table 2, three runs).
_TABLE2_ROWS = """
DenseNet121      0.9705 0.0047 0.9547 0.0153 0.9849 0.0214 0.9592 0.0216 0.9694 0.0050 0.9984 0.0004
DenseNet169      0.9732 0.0047 0.9500 0.0147 0.9962 0.0007 0.9567 0.0180 0.9738 0.0055 0.9982 0.0003
EfficientNetB4   0.9642 0.0040 0.9507 0.0137 0.9755 0.0086 0.9541 0.0135 0.9623 0.0040 0.9940 0.0062
EfficientNetV2S  0.9615 0.0086 0.9502 0.0109 0.9699 0.0086 0.9541 0.0102 0.9599 0.0090 0.9976 0.0005
ResNet50V2       0.9723 0.0016 0.9746 0.0288 0.9680 0.0279 0.9762 0.0281 0.9710 0.0001 0.9981 0.0001
Xception         0.9418 0.0295 0.9246 0.0538 0.9579 0.0029 0.9274 0.0560 0.9404 0.0284 0.9936 0.0066
"""

# params (M), inference step mean ms, std ms (Table 3, ten runs).
_TABLE3_ROWS = """
ConvNeXtTiny      28.3 582.1 18.6
DenseNet121        7.7 334.9 72.4
DenseNet169       13.6 396.9 67.2
DenseNet201       19.4 409.2 51.8
EfficientNetB4    18.7 442.9 52.7
EfficientNetV2S   21.1 382.6 65.7
InceptionV3       23.0 380.7 86.6
MobileNetV3Large   3.6 325.4 44.7
RegNetX040        21.7 457.2 56.1
RegNetY040        20.3 446.3 86.3
ResNet50V2        24.7 368.3 87.2
VGG19             20.4 490.2 45.1
Xception          22.0 395.3 76.9
"""

_TABLE_A1_ROWS = """
ConvNeXtTiny      0.9519
DenseNet121       0.9595
DenseNet169       0.9752
DenseNet201       0.9538
EfficientNetB4    0.9678
EfficientNetV2S   0.9661
InceptionV3       0.9468
MobileNetV3Large  0.9557
RegNetX040        0.9529
RegNetY040        0.9486
ResNet50V2        0.9780
VGG19             0.9517
Xception          0.9659
"""


def _rows(text: str) -> dict[str, list[float]]:
    rows = {}
    for line in text.strip().splitlines():
        name, *values = line.split()
        rows[name] = [float(value) for value in values]
    return rows


#: Table 1 (one run each, test set): model → metric → value.
TABLE1: dict[str, dict[str, float]] = {
    name: dict(zip(TABLE_METRICS, values)) for name, values in _rows(_TABLE1_ROWS).items()
}
#: Table 2 (top six, three runs): model → metric → (mean, std).
TABLE2: dict[str, dict[str, tuple[float, float]]] = {
    name: {metric: (values[2 * i], values[2 * i + 1]) for i, metric in enumerate(TABLE_METRICS)}
    for name, values in _rows(_TABLE2_ROWS).items()
}
#: Table 3: model → {"params_m", "latency_ms_mean", "latency_ms_std"}.
TABLE3: dict[str, dict[str, float]] = {
    name: dict(zip(("params_m", "latency_ms_mean", "latency_ms_std"), values))
    for name, values in _rows(_TABLE3_ROWS).items()
}
#: Table A1: model → H (harmonic mean of accuracy, F1, specificity on Table 1).
TABLE_A1: dict[str, float] = {name: values[0] for name, values in _rows(_TABLE_A1_ROWS).items()}
#: The six models the study repeated (Appendix A; bold in Table A1).
TOP_SIX = ("DenseNet121", "DenseNet169", "EfficientNetB4", "EfficientNetV2S", "ResNet50V2", "Xception")


def study_ranks() -> dict[str, int]:
    """Rank of each model by the study's H (1 = best), as Table A1 implies."""
    ordered = sorted(TABLE_A1, key=lambda name: (-TABLE_A1[name], name))
    return {name: position for position, name in enumerate(ordered, start=1)}
