"""The study's training protocol pinned to its numbers (DESIGN §2): the paper config's two phases,
the fitting loop keeping the lowest-validation-loss epoch of each phase, the head, and H.

Each assertion names the study's value, so a change of the protocol (not only of internal
consistency) fails here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from medfake.core.config import load_config
from medfake.training import fitting, metrics

# Study section 4 (DESIGN §2): phase 1 frozen, phase 2 unfrozen.
STUDY_PHASES = {1: (80, 1e-4), 2: (20, 1e-5)}


@pytest.fixture(scope="module")
def paper():
    return load_config("paper")


# -- the paper config -------------------------------------------------------------------------
def test_paper_config_has_the_studys_two_phases(paper):
    train = paper.train
    assert (train.phase1_epochs, train.phase1_lr) == STUDY_PHASES[1]
    assert (train.phase2_epochs, train.phase2_lr) == STUDY_PHASES[2]
    assert (train.beta_1, train.beta_2) == (0.9, 0.999)
    assert train.batch_size == 8
    assert train.unfreeze == "all"
    assert tuple(paper.model.head_units) == (512, 256) and paper.model.dropout == 0.0
    assert paper.model.noise_residual is False  # the study's grey slice ×3 into ImageNet weights
    assert paper.model.weights == "imagenet"
    assert paper.data.image_size == 512


# -- the fitting loop keeps the lowest-validation-loss epoch -------------------------------------
class _History:
    def __init__(self, loss):
        self.history = {"loss": [loss]}


class _FakeModel:
    """Stands in for a Keras model: each ``fit`` call is one epoch and sets the weights to the
    epoch's number, so the weights the loop ends with say which epoch it kept."""

    def __init__(self):
        self.fits = 0
        self.weights = [np.array([-1.0])]

    def fit(self, x, y, epochs, verbose, shuffle):
        assert epochs == 1 and shuffle is False
        self.weights = [np.array([float(self.fits)])]
        self.fits += 1
        return _History(0.5)

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        self.weights = [np.asarray(w).copy() for w in weights]


def _val_scores_for_losses(model: _FakeModel, losses):
    """Validation scores on labels (0, 1) whose cross-entropy after epoch k is ``losses[k]``."""

    def scores():
        q = math.exp(-losses[model.fits - 1])  # -log q = the wanted loss on both samples
        return np.array([1.0 - q, q])

    return scores


def _run(losses, epochs=None):
    model = _FakeModel()
    state = fitting.run_phase(
        model, 1, len(losses) if epochs is None else epochs, lambda epoch: (None, None),
        _val_scores_for_losses(model, losses), np.array([0.0, 1.0]), progress=False,
    )
    return model, state


def test_loop_keeps_the_weights_of_the_lowest_validation_loss_epoch():
    losses = [0.9, 0.4, 0.6, 0.3, 0.5, 0.35]
    model, state = _run(losses)
    assert model.fits == 6
    assert state.best_epoch == 3 and state.best_val_loss == pytest.approx(0.3)
    assert float(model.get_weights()[0][0]) == 3.0  # epoch 3's weights, not the last epoch's (5)
    assert [h["val_loss"] for h in state.history] == pytest.approx(losses)


def test_loop_keeps_the_first_of_equal_lowest_losses_and_the_first_epoch_when_it_is_best():
    model, state = _run([0.7, 0.2, 0.2, 0.5])
    assert state.best_epoch == 1 and float(model.get_weights()[0][0]) == 1.0
    model, state = _run([0.1, 0.2, 0.3])
    assert state.best_epoch == 0 and float(model.get_weights()[0][0]) == 0.0


@pytest.mark.parametrize("phase", [1, 2])
def test_each_phase_runs_the_paper_configs_epochs_and_keeps_its_best(paper, phase):
    epochs = paper.train.phase1_epochs if phase == 1 else paper.train.phase2_epochs
    assert epochs == STUDY_PHASES[phase][0]
    best = epochs // 3
    losses = [1.0 + 0.01 * k for k in range(epochs)]
    losses[best] = 0.25
    model, state = _run(losses, epochs=epochs)
    assert model.fits == epochs and state.epochs_done == epochs
    assert state.best_epoch == best and float(model.get_weights()[0][0]) == best


def test_validation_loss_is_the_clipped_binary_cross_entropy():
    y = np.array([1.0, 0.0, 1.0, 0.0])
    p = np.array([0.8, 0.3, 1.0, 0.0])
    expected = -(math.log(0.8) + math.log(0.7) + 2 * math.log(1 - 1e-7)) / 4
    assert fitting.bce(y, p) == pytest.approx(expected, rel=1e-9)
    assert metrics.binary_cross_entropy(y, p) == pytest.approx(expected, rel=1e-9)


# -- H: the harmonic mean (Table A1, eq. 4) -----------------------------------------------------
def test_h_is_the_harmonic_mean_of_accuracy_f1_and_specificity():
    # 3 / (10/9 + 5/4 + 5/3) = 108/145: not the arithmetic (0.7667) or geometric (0.7560) mean.
    assert metrics.h_score(0.9, 0.8, 0.6) == pytest.approx(108 / 145, abs=1e-12)
    assert metrics.h_score(0.5, 0.5, 0.5) == pytest.approx(0.5, abs=1e-12)
    assert metrics.h_score(1.0, 0.25, 1.0) == pytest.approx(0.5, abs=1e-12)  # 3 / (1 + 4 + 1)
    assert metrics.h_score(0.9, 0.0, 0.8) == 0.0
    assert math.isnan(metrics.h_score(0.9, math.nan, 0.8))
    assert metrics.harmonic_mean([2.0]) == 2.0
    assert metrics.harmonic_mean([1.0, 0.5]) == pytest.approx(2 / 3, abs=1e-12)
    with pytest.raises(ValueError):
        metrics.harmonic_mean([])
    with pytest.raises(ValueError):
        metrics.harmonic_mean([0.5, -0.1])


def test_h_of_the_studys_table_1_rows_gives_table_a1():
    # (accuracy, F1, specificity) → H, study Tables 1 and A1.
    assert metrics.h_score(0.9786, 0.9777, 0.9694) == pytest.approx(0.9752, abs=6e-5)  # DenseNet169
    assert metrics.h_score(0.9544, 0.9524, 0.9490) == pytest.approx(0.9519, abs=6e-5)  # ConvNeXtTiny


def test_binary_metrics_on_a_hand_counted_split():
    # 4 fakes, 6 reals; threshold 0.5 with a score exactly at 0.5 counted fake (score ≥ threshold).
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.5, 0.7, 0.2, 0.1, 0.6, 0.3, 0.49, 0.0, 0.4])
    m = metrics.binary_metrics(y, s, threshold=0.5)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 1, 1, 5)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["precision"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["f1"] == pytest.approx(0.75)
    assert m["h"] == pytest.approx(3 / (1 / 0.8 + 1 / 0.75 + 6 / 5))
    assert m["auc"] == pytest.approx(19 / 24)  # pairs (fake, real) ranked right, of 4 × 6


def test_the_detector_head_is_gap_512_256_one_sigmoid(paper):
    from medfake.models.detector import build_detector

    model = build_detector("MobileNetV3Large", 32, weights=None, head_units=paper.model.head_units,
                           dropout=paper.model.dropout)
    backbone = model.get_layer("backbone")
    chain = []
    layer = model.layers[-1]
    while layer is not backbone:  # walk back from the output to the backbone
        chain.append(layer)
        inbound = layer._inbound_nodes[0].parent_nodes
        assert len(inbound) == 1, f"{layer.name} has {len(inbound)} inputs"
        layer = inbound[0].operation
    kinds = [(type(layer).__name__, getattr(layer, "units", None)) for layer in reversed(chain)]
    assert kinds == [("GlobalAveragePooling2D", None), ("Dense", 512), ("Dense", 256), ("Dense", 1)]
    activations = [layer.activation.__name__ for layer in reversed(chain[:3])]
    assert activations == ["relu", "relu", "sigmoid"]
    assert model.output_shape == (None, 1)


# -- the significance tests select reports beside Table 2 (killing mutants the suite missed) ------
def test_mcnemar_uses_chi_square_from_25_discordant_pairs_with_one_degree_of_freedom():
    # 20 slices only A gets right, 5 only B: 25 discordant → (|20 - 5| - 1)² / 25 = 7.84, 1 d.o.f.
    y = np.ones(30, dtype=int)
    a = np.array([1] * 20 + [0] * 5 + [1] * 5)
    b = np.array([0] * 20 + [1] * 5 + [1] * 5)
    statistic, p = metrics.mcnemar(y, a, b)
    assert statistic == pytest.approx(7.84)
    assert p == pytest.approx(math.erfc(math.sqrt(7.84 / 2)), rel=1e-9)  # χ²(1) survival function
    # 24 discordant: the exact binomial test, statistic = min(b, c).
    statistic, p = metrics.mcnemar(*(np.delete(v, 24) for v in (y, a, b)))  # one only-B slice less
    assert statistic == 4.0
    assert p == pytest.approx(2 * sum(math.comb(24, k) for k in range(5)) / 2**24, rel=1e-9)


def test_mcnemar_rejects_bad_inputs_by_name():
    with pytest.raises(ValueError, match="^labels must be binary"):
        metrics.mcnemar([0, 2], [0, 1], [0, 1])
    with pytest.raises(ValueError, match="^pred_a must be binary"):
        metrics.mcnemar([0, 1], [0, 3], [0, 1])
    with pytest.raises(ValueError, match="^pred_b must be binary"):
        metrics.mcnemar([0, 1], [0, 1], [5, 1])
    with pytest.raises(ValueError, match=r"^shapes differ: \(3,\), \(2,\), \(3,\)$"):
        metrics.mcnemar([0, 1, 1], [0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="^shapes differ"):
        metrics.mcnemar([[0, 1]], [[0, 1]], [[1, 1]])  # equal shapes, but not one sample axis


def test_delong_needs_two_of_each_class_and_separates_opposite_rankings():
    y = [1, 1, 0, 0]
    auc_a, auc_b, z, p = metrics.delong_auc_test(y, [0.9, 0.8, 0.1, 0.2], [0.1, 0.2, 0.9, 0.8])
    assert (auc_a, auc_b) == (1.0, 0.0)
    assert z == math.inf and p == 0.0  # no variance, different AUCs: certainly different
    assert metrics.delong_auc_test(y, [0.9, 0.2, 0.8, 0.1], [0.9, 0.2, 0.8, 0.1])[2:] == (0.0, 1.0)
    with pytest.raises(ValueError, match="^DeLong's test needs two samples of each class, got 1 fake, 5 real$"):
        metrics.delong_auc_test([1, 0, 0, 0, 0, 0], [0.9, 0.1, 0.2, 0.3, 0.4, 0.5], [0.5] * 6)
    with pytest.raises(ValueError, match="got 5 fake, 1 real"):
        metrics.delong_auc_test([0, 1, 1, 1, 1, 1], [0.9, 0.1, 0.2, 0.3, 0.4, 0.5], [0.5] * 6)


def test_specificity_and_h_edge_cases_by_hand():
    only_fakes = metrics.binary_metrics([1, 1, 1], [0.9, 0.2, 0.7])
    assert only_fakes["specificity"] == 0.0 and only_fakes["h"] == 0.0  # no real slice: 0, not 1 or NaN
    # tn == fp (1 each): specificity 1/2, not the zero-division fallback.
    one_fake = metrics.binary_metrics([1, 0, 0], [0.9, 0.2, 0.7])
    assert one_fake["specificity"] == 0.5 and one_fake["auc"] == 1.0  # one fake is enough for a ROC curve
    assert math.isnan(metrics.binary_metrics([0, 0], [0.1, 0.6])["auc"])  # only reals: no ROC curve
    # From bootstrap indices: every fake missed → F1 = 0 → H = 0.
    row = metrics.metrics_from_indices([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], np.arange(4))
    assert row[metrics.METRICS.index("f1")] == 0.0 and row[metrics.METRICS.index("h")] == 0.0


def test_calibration_error_bins_by_hand():
    # Ten bins of width 0.1; 0.85 and 0.95 fall in different bins, 1.0 in the last one.
    assert metrics.expected_calibration_error([1, 0], [0.85, 0.95]) == pytest.approx((0.15 + 0.95) / 2)
    assert metrics.expected_calibration_error([1, 0], [0.95, 1.0]) == pytest.approx(abs(1 - 1.95) / 2)


def test_threshold_bounds_and_one_dimensional_inputs():
    assert metrics.predict_labels([0.0, 0.3, 1.0], 0.0).tolist() == [1, 1, 1]  # both ends are valid thresholds
    assert metrics.predict_labels([0.0, 0.3, 1.0], 1.0).tolist() == [0, 0, 1]
    for bad in (-0.01, 1.01, 2.0):
        with pytest.raises(ValueError, match="^threshold must lie in"):
            metrics.predict_labels([0.5], bad)
    with pytest.raises(ValueError, match="must be 1-D"):
        metrics.binary_metrics([[1], [0]], [0.9, 0.1])
    with pytest.raises(ValueError, match="must be 1-D"):
        metrics.binary_metrics([1, 0], [[0.9], [0.1]])
    with pytest.raises(ValueError, match="^labels and scores are empty$"):
        metrics.binary_metrics([], [])
