"""edgeseg: take a trained semantic segmentation model to a fast, verified deployment."""

__version__ = "0.1.0"
