"""ONNX Runtime runner (CPU, or CUDA where that provider is installed). Imports no torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeseg.errors import UsageError, first_line
from edgeseg.lazy import lazy_import
from edgeseg.runners.base import TensorSpec
from edgeseg.zoo.contract import Preprocessing

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

METADATA_PREPROCESSING = "edgeseg.preprocessing"
METADATA_OUTPUT = "edgeseg.output"

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
              "tensor(int64)": "int64"}


def ort_session(path: Path, device: str = "auto", threads: int | None = None) -> tuple[InferenceSession, str]:
    ort = lazy_import("onnxruntime")
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise UsageError("--device cuda needs onnxruntime-gpu (CUDAExecutionProvider is not available here)")
    use_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own exception types (InvalidProtobuf, Fail, ...)
        raise UsageError(f"{path} cannot be loaded by ONNX Runtime: {first_line(exc)}") from exc
    return session, ("ort-cuda" if use_cuda else "ort-cpu")


def read_metadata(session: InferenceSession) -> tuple[Preprocessing | None, str]:
    custom = session.get_modelmeta().custom_metadata_map
    preprocessing = None
    if METADATA_PREPROCESSING in custom:
        preprocessing = Preprocessing.from_dict(json.loads(custom[METADATA_PREPROCESSING]))
    return preprocessing, custom.get(METADATA_OUTPUT, "logits")


class OrtRunner:
    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None) -> None:
        self.path = Path(path)
        self.session, self.backend = ort_session(self.path, device, threads)
        preprocessing, self.output_kind = read_metadata(self.session)
        if preprocessing is None:
            raise UsageError(f"{self.path} carries no edgeseg preprocessing metadata; give its model card with --card "
                             f"CARD.toml ('edgeseg card init {self.path}' writes one), or export it with "
                             f"'edgeseg export'")
        self.preprocessing = preprocessing
        model_input = self.session.get_inputs()[0]
        self.input_spec = TensorSpec(model_input.name, tuple(model_input.shape),
                                     _ORT_TYPES.get(model_input.type, model_input.type))
        # A foreign graph with several outputs names its segmentation output in the card (edgeseg.output_name).
        chosen = self.session.get_modelmeta().custom_metadata_map.get("edgeseg.output_name")
        names = [output.name for output in self.session.get_outputs()]
        self._output_name = chosen if chosen in names else names[0]

    def __enter__(self) -> "OrtRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.session = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=self.input_spec.dtype)
        return self.session.run([self._output_name], {self.input_spec.name: batch})[0]
