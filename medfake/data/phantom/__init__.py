"""The synthetic chest-CT phantom (the embedded default data and the data of every test).

One module per job: :mod:`.anatomy` (per-patient body and geometry), :mod:`.render` (HU slices and
scanner noise), :mod:`.tamper` (CT-GAN-like local tampers), :mod:`.labels` (label plans and true
tamper extents), :mod:`.writer` (DICOM series), :mod:`.generate` (the whole phantom on disk). The
``synth`` step's command line is :mod:`medfake.data.synth`.
"""

from medfake.data.phantom.generate import LAYOUTS, PhantomInfo, ensure_phantom, write_phantom
from medfake.data.phantom.labels import EXPERIMENTS, LABEL_TYPES

__all__ = ["EXPERIMENTS", "LABEL_TYPES", "LAYOUTS", "PhantomInfo", "ensure_phantom", "write_phantom"]
