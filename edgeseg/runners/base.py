"""The Runner interface and `open_runner`, which picks a backend from the artifact's file type.

A runner is a context manager with `input_spec`, `preprocessing` and `infer(batch) -> output`: NCHW float32 in,
NxKxHxW logits (or NxHxW uint8 labels when post-processing is fused into the graph) out, as numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from edgeseg.bundle_layout import ENGINE_SUFFIXES, artifact_to_run
from edgeseg.errors import UsageError
from edgeseg.zoo.contract import Preprocessing


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # ints, or strings for dynamic axes
    dtype: str  # numpy dtype name


@runtime_checkable
class Runner(Protocol):
    backend: str  # "torch", "ort-cpu", "ort-cuda", "ov-cpu", "trt"
    input_spec: TensorSpec
    preprocessing: Preprocessing
    output_kind: str  # "logits" or "labels"

    def __enter__(self) -> "Runner": ...

    def __exit__(self, *exc: object) -> None: ...

    def infer(self, batch: np.ndarray) -> np.ndarray: ...


RUNNER_BACKENDS = ("auto", "ort-cpu", "ort-cuda", "ov-cpu", "trt")


def open_runner(path: str | Path, device: str = "auto", threads: int | None = None,
                backend: str = "auto") -> Runner:
    """Open an .onnx model (ONNX Runtime, or OpenVINO with backend="ov-cpu"), an OpenVINO IR (.xml), an .engine
    (TensorRT) or a build bundle directory: the artifact bundle_layout.artifact_to_run chooses (its engine, else
    the default CPU variant its report names, else its ONNX models)."""
    if backend not in RUNNER_BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose {', '.join(RUNNER_BACKENDS)}")
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    hint = "f32"
    if path.is_dir():
        chosen = artifact_to_run(path, device, backend)
        path, backend, hint = chosen.path, chosen.backend, chosen.hint
    if path.suffix == ".xml" and backend not in ("auto", "ov-cpu"):
        raise UsageError(f"{path.name} is an OpenVINO IR; run it with --backend ov-cpu, not {backend}")
    if path.suffix == ".xml" or backend == "ov-cpu":
        if path.suffix not in (".onnx", ".xml"):
            raise UsageError(f"{path}: OpenVINO runs .onnx or .xml (IR) models, not {path.suffix or 'this file'}")
        if device == "cuda":
            raise UsageError("the ov-cpu backend runs on the CPU; drop --device cuda")
        from edgeseg.runners.ov import OvRunner

        return OvRunner(path, threads=threads, precision_hint=hint)
    if path.suffix == ".onnx":
        from edgeseg.runners.ort import OrtRunner

        if backend in ("ort-cpu", "ort-cuda"):
            device = backend.split("-")[1]
        return OrtRunner(path, device=device, threads=threads)
    if path.suffix in ENGINE_SUFFIXES:
        from edgeseg.runners.trt import TensorRTRunner

        return TensorRTRunner(path)
    raise UsageError(f"{path}: cannot run a {path.suffix or 'file without suffix'}; give an .onnx, .xml, .engine "
                     "or bundle")
