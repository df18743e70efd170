"""The ``synth`` step: a synthetic chest-CT phantom written as DICOM in the CT-GAN and LIDC-IDRI layouts.

Real data (CT-GAN tampered scans, LIDC-IDRI) cannot be downloaded here, so this phantom is the
embedded default data and the data of every test. Each scan runs from the neck (file 0) through
the thorax to the upper abdomen, with lungs, branching vessels, bone, heart and liver, real
nodules and scanner-like correlated noise. CT-GAN-style scans carry TB/TM/FB/FM labels
(``labels_exp1.csv``, ``labels_exp2.csv``); FB/FM labels are real local tampers in the manner of
CT-GAN (study section 3.2): a ~32-voxel cube is re-synthesised with a generator-like texture,
a nodule is injected (FM) or in-painted away (FB), and the cube's border is blended. The true
z-extent of each tamper varies, sometimes inside and sometimes beyond the study's ±5 slices
(Figure 1). Ground truth goes to ``truth/`` beside the scans and never into the DICOM.

Experiment 2's tampers come from a different generator setting than experiment 1's (weaker
checkerboard, smoother texture, sharper anatomy copy, wider blending; recorded in
``phantom.json``): a stated, seeded, simulated domain shift for measuring cross-experiment
generalisation (config ``exp1-to-exp2``), not a claim about how real CT-GAN's experiments differ.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medfake.data.phantom import LAYOUTS, ensure_phantom


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("data/phantom"), help="output folder (default: data/phantom)")
    parser.add_argument("--scans", type=int, default=20,
                        help="CT-GAN-style scans, ~80/20 over experiments 1/2 (default 20)")
    parser.add_argument("--lidc-scans", type=int, default=10, help="LIDC-style untampered scans (default 10)")
    parser.add_argument("--size", type=int, default=512, help="rows = columns per slice, 32..1024 (default 512)")
    parser.add_argument("--slices", type=int, default=120,
                        help="nominal slices per scan, each scan varies ±10%% (default 120)")
    parser.add_argument("--seed", type=int, default=7, help="random seed; same seed, same bytes (default 7)")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="new",
                        help="CT-GAN folder names: new = CT_Scans/EXP1_blind, "
                             "original = 'Tampered Scans/Experiment 1 - Blind'")
    parser.add_argument("--force", action="store_true", help="regenerate even when a matching phantom exists")


def run(args: argparse.Namespace) -> int:
    info = ensure_phantom(args.out, scans=args.scans, lidc_scans=args.lidc_scans, size=args.size,
                          slices=args.slices, seed=args.seed, layout=args.layout, progress=True, force=args.force)
    if info.reused:
        print(f"{info.root} already holds a complete phantom with these parameters; nothing regenerated "
              f"(use --force to rewrite).")
    print(info.summary())
    return 0
