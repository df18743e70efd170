"""Wall time of the study's whole protocol, projected from measured per-image step times.

The protocol (paper sections 3-4, ``experiments/paper.yaml``): 2,486 images, 1,243 CT-GAN fakes and
as many LIDC slices (section 3.1), split 70/15/15; each run trains the head for 80 epochs on cached
backbone features (phase 1) and the whole network for 20 epochs (phase 2) at batch 8; all 13
backbones are screened and the top six are trained twice more (``select``'s defaults): 25 runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

STUDY_FAKES = 1243  # CT-GAN slices: 113 labels, each with the slices within ±5 of it
STUDY_IMAGES = 2 * STUDY_FAKES  # balanced with as many LIDC-IDRI slices


@dataclass(frozen=True)
class Protocol:
    """What one projection counts: images, split, epochs and how many runs are repeated."""

    images: int = STUDY_IMAGES
    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
    phase1_epochs: int = 80
    phase2_epochs: int = 20
    top_k: int = 6
    repeats: int = 2

    @classmethod
    def from_config(cls, name: str = "paper") -> "Protocol":
        """The protocol a config trains (epochs, split) with ``select``'s top-k and repeats."""
        from medfake.core.config import load_config
        from medfake.study.select import SelectOptions

        cfg, select = load_config(name), SelectOptions()
        return cls(STUDY_IMAGES, tuple(cfg.data.split_fractions), cfg.train.phase1_epochs, cfg.train.phase2_epochs,
                   select.top_k, select.repeats)

    def split(self) -> tuple[int, int, int]:
        """(train, val, test) image counts; test takes the rounding remainder (373 of 2,486)."""
        train, val = round(self.images * self.fractions[0]), round(self.images * self.fractions[1])
        return train, val, self.images - train - val

    def runs(self, backbones: int) -> int:
        """Screen runs plus repeats: 13 + 6 × 2 = 25 for the study."""
        return backbones + min(self.top_k, backbones) * self.repeats


@dataclass(frozen=True)
class StepCosts:
    """Seconds per image of one backbone's steps at the batch they were measured with."""

    infer_s: float  # inference through the whole detector
    train_s: float  # one phase-2 training step (all layers trainable)
    head_s: float = 0.0  # one phase-1 training step of the head on cached features


def run_seconds(cost: StepCosts, protocol: Protocol = Protocol()) -> float:
    """One train run: the feature pass, phase 1 on cached features, phase 2 with validation, the test pass.

    A naive phase 1 (the frozen backbone re-run every epoch) is this with ``head_s = infer_s``.
    """
    train, val, test = protocol.split()
    feature_pass = (train + val) * cost.infer_s
    phase1 = protocol.phase1_epochs * (train + val) * cost.head_s
    phase2 = protocol.phase2_epochs * (train * cost.train_s + val * cost.infer_s)
    return feature_pass + phase1 + phase2 + test * cost.infer_s


def study_seconds(costs: Mapping[str, StepCosts], protocol: Protocol = Protocol()) -> tuple[float, list[str]]:
    """Every backbone screened once plus ``repeats`` more runs of the ``top_k`` *slowest* ones.

    Which six the screen keeps is known only after it, so the slowest six make the projection an
    upper bound. Returns (seconds, the backbones counted as repeated).
    """
    per_run = {name: run_seconds(cost, protocol) for name, cost in costs.items()}
    repeated = sorted(per_run, key=per_run.__getitem__, reverse=True)[:protocol.top_k]
    return sum(per_run.values()) + protocol.repeats * sum(per_run[name] for name in repeated), repeated
