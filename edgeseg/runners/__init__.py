"""Runners: one small interface over torch, ONNX Runtime (CPU/CUDA) and TensorRT, so bench and demo never care
which backend runs. Importing this package imports no backend."""

from edgeseg.runners.base import Runner, TensorSpec, open_runner

__all__ = ["Runner", "TensorSpec", "open_runner"]
