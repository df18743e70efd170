"""medfake: detect GAN-tampered CT slices (medical deepfakes) with deep CNNs, tracked in MLflow."""

__version__ = "0.1.0"
