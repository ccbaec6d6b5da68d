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
    backend: str  # "torch", "ort-cpu", "ort-cuda", "ov-cpu", "trt"
    input_spec: TensorSpec
    preprocessing: Preprocessing
    output_kind: str  # "logits" or "labels"

    def __enter__(self) -> "Runner": ...

    def __exit__(self, *exc) -> None: ...

    def infer(self, batch: np.ndarray) -> np.ndarray: ...


RUNNER_BACKENDS = ("auto", "ort-cpu", "ort-cuda", "ov-cpu", "trt")


def open_runner(path: str | Path, device: str = "auto", threads: int | None = None,
                backend: str = "auto") -> Runner:
    """Open an .onnx model (ONNX Runtime, or OpenVINO with backend="ov-cpu"), an OpenVINO IR (.xml), an .engine
    (TensorRT) or a build bundle directory: its engine, else the default CPU variant its report names."""
    if backend not in RUNNER_BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose {', '.join(RUNNER_BACKENDS)}")
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    hint = "f32"
    if path.is_dir():
        path, backend, hint = _bundle_artifact(path, device, backend)
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
    if path.suffix in (".engine", ".plan", ".trt"):
        from edgeseg.runners.trt import TensorRTRunner

        return TensorRTRunner(path)
    raise UsageError(f"{path}: cannot run a {path.suffix or 'file without suffix'}; give an .onnx, .xml, .engine "
                     "or bundle")


def _bundle_artifact(bundle: Path, device: str, backend: str) -> tuple[Path, str, str]:
    """(file, backend, OpenVINO precision hint) to run from a bundle: a built engine where a GPU may be used,
    else the default CPU variant of its report.json (the fastest within its accuracy budget, measured at build
    time), else the INT8, FP16 and FP32 ONNX models on ONNX Runtime."""
    from edgeseg.cpu_variants import best_variant

    candidates = sorted(bundle.glob("*.engine"))
    if backend in ("auto", "trt") and device in ("auto", "cuda") and candidates:
        return candidates[0], "trt", "f32"
    if backend == "trt":
        raise UsageError(f"{bundle} holds no TensorRT engine; build one with 'edgeseg engine build {bundle}'")
    if device != "cuda" and backend in ("auto", "ort-cpu", "ov-cpu"):
        variant = best_variant(bundle, None if backend == "auto" else backend)
        if variant is not None:
            return bundle / variant.file, variant.backend, variant.hint or "f32"
    for name in ("model.int8.onnx", "model.fp16.onnx", "model.onnx"):
        if (bundle / name).is_file():
            return bundle / name, backend, "f32"
    raise UsageError(f"{bundle} holds no model.onnx or engine; is it an edgeseg build bundle?")
