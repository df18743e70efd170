"""Data sets: the CT-GAN and LIDC-IDRI layouts, the synthetic phantom, and the balanced slice set."""
