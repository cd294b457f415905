"""al-lightning: active semi-supervised learning on images with PyTorch Lightning."""

__version__ = "0.1.0"
