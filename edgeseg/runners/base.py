"""The Runner interface and `open_runner`, which picks a backend from the artifact's file type.

A runner is a context manager with `input_spec`, `preprocessing` and `infer(batch) -> output`: NCHW float32 in,
NxKxHxW logits (or NxHxW uint8 labels when post-processing is fused into the graph) out, as numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from edgeseg.errors import UsageError
from edgeseg.zoo.contract import Preprocessing


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # ints, or strings for dynamic axes
    dtype: str  # numpy dtype name


@runtime_checkable
class Runner(Protocol):
    backend: str  # "torch", "ort-cpu", "ort-cuda", "trt"
    input_spec: TensorSpec
    preprocessing: Preprocessing
    output_kind: str  # "logits" or "labels"

    def __enter__(self) -> "Runner": ...

    def __exit__(self, *exc) -> None: ...

    def infer(self, batch: np.ndarray) -> np.ndarray: ...


def open_runner(path: str | Path, device: str = "auto", threads: int | None = None) -> Runner:
    """Open an .onnx model (ONNX Runtime), an .engine (TensorRT) or a build bundle directory (its best artifact)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    if path.is_dir():
        path = _bundle_artifact(path, device)
    if path.suffix == ".onnx":
        from edgeseg.runners.ort import OrtRunner

        return OrtRunner(path, device=device, threads=threads)
    if path.suffix in (".engine", ".plan", ".trt"):
        from edgeseg.runners.trt import TensorRTRunner

        return TensorRTRunner(path)
    raise UsageError(f"{path}: cannot run a {path.suffix or 'file without suffix'}; give an .onnx, .engine or bundle")


def _bundle_artifact(bundle: Path, device: str) -> Path:
    """In a bundle, prefer a built engine, then the INT8, FP16 and FP32 ONNX models."""
    candidates = sorted(bundle.glob("*.engine"))
    if device in ("auto", "cuda") and candidates:
        return candidates[0]
    for name in ("model.int8.onnx", "model.fp16.onnx", "model.onnx"):
        if (bundle / name).is_file():
            return bundle / name
    raise UsageError(f"{bundle} holds no model.onnx or engine; is it an edgeseg build bundle?")
