"""OpenVINO CPU runner (`ov-cpu`): the same ONNX files ONNX Runtime runs (Q/DQ included), or an OpenVINO IR
(.xml + .bin), behind the Runner interface. Imports no torch; openvino is the optional extra `openvino`.

OpenVINO picks the precision of float layers itself: on a CPU with AVX512-BF16 or AMX it runs them in bf16
unless told otherwise. That would silently make an "fp32" row a bf16 one, so this runner always sets
`inference_precision` explicitly (f32 unless bf16 is asked for), refuses bf16 where the CPU lacks it, and reads
the hint back from the compiled model so what ran is what is recorded (with the other compile properties that
decide speed: latency hint, one stream, threads, pinning; see RECORDED_PROPERTIES). In an INT8 (Q/DQ) model
the quantized layers run in int8 whatever the hint; the hint decides the layers left in float.

Before compiling, the runner makes the exact graph rewrites of ov_rewrites (the logits' final resize split per
axis), listed in `graph_rewrites`; `rewrite=False` runs the model as OpenVINO alone would (the benchmark's peers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import UsageError, first_line
from edgeseg.lazy import lazy_import
from edgeseg.runners.base import TensorSpec
from edgeseg.runners.ov_rewrites import SPLIT_OUTPUT_RESIZE, split_output_resizes
from edgeseg.runners.ort import METADATA_OUTPUT, METADATA_PREPROCESSING
from edgeseg.zoo.contract import Preprocessing

PRECISION_HINTS = ("f32", "bf16")
# Compile properties read back from the compiled model and recorded with every measured row: what really ran.
RECORDED_PROPERTIES = ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT",
                       "ENABLE_CPU_PINNING", "ENABLE_HYPER_THREADING", "SCHEDULING_CORE_TYPE",
                       "CPU_DENORMALS_OPTIMIZATION", "EXECUTION_MODE_HINT")
_OV_TYPES = {"f32": "float32", "f16": "float16", "u8": "uint8", "i64": "int64"}


def cpu_capabilities() -> tuple[str, ...]:
    """OpenVINO's optimization capabilities of this CPU (e.g. FP32, BF16, INT8); () without openvino."""
    try:
        import openvino as ov
    except ImportError:
        return ()
    return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def bf16_available() -> bool:
    return "BF16" in cpu_capabilities()


def _metadata(model: Any) -> dict[str, str]:  # an openvino.Model
    """ONNX metadata_props (OpenVINO keeps them under rt_info 'framework'), or what edgeseg saved into an IR."""
    found = {}
    for key in (METADATA_PREPROCESSING, METADATA_OUTPUT):
        for path in (["framework", key], [key]):
            if model.has_rt_info(path):
                found[key] = model.get_rt_info(path).astype(str)
                break
    return found


class OvRunner:
    backend = "ov-cpu"

    def __init__(self, path: str | Path, threads: int | None = None, precision_hint: str = "f32",
                 rewrite: bool = True) -> None:
        if precision_hint not in PRECISION_HINTS:
            raise UsageError(f"OpenVINO precision hint {precision_hint!r}: choose {', '.join(PRECISION_HINTS)}")
        ov = lazy_import("openvino", extra="openvino")
        self.path = Path(path)
        core = ov.Core()
        if precision_hint == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise UsageError("this CPU has no bf16 support (AVX512-BF16 or AMX); OpenVINO would run f32 instead: "
                             "use the f32 hint")
        try:
            model = core.read_model(str(self.path))
        except Exception as exc:  # OpenVINO raises RuntimeError with a multi-line C++ message
            raise UsageError(f"{self.path} cannot be loaded by OpenVINO: {first_line(exc)}") from exc
        metadata = _metadata(model)
        if METADATA_PREPROCESSING not in metadata:
            raise UsageError(f"{self.path} carries no edgeseg preprocessing metadata; export it with 'edgeseg export'")
        self.preprocessing = Preprocessing.from_dict(json.loads(metadata[METADATA_PREPROCESSING]))
        self.output_kind = metadata.get(METADATA_OUTPUT, "logits")
        rewritten = split_output_resizes(model) if rewrite else []
        self.graph_rewrites = [f"{SPLIT_OUTPUT_RESIZE}: {name}" for name in rewritten]
        config = {"INFERENCE_PRECISION_HINT": precision_hint, "PERFORMANCE_HINT": "LATENCY",
                  "NUM_STREAMS": "1"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self._compiled = core.compile_model(model, "CPU", config)
        # What OpenVINO will really use (bf16 / f32), read back rather than assumed.
        self.inference_precision = _hint_name(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        if self.inference_precision != precision_hint:
            raise UsageError(f"OpenVINO compiled {self.path.name} with inference precision "
                             f"{self.inference_precision}, not the {precision_hint} asked for")
        self.threads = int(self._compiled.get_property("INFERENCE_NUM_THREADS"))
        self.compile_properties = _read_properties(self._compiled)
        model_input = self._compiled.inputs[0]
        shape = model_input.get_partial_shape()
        self.input_spec = TensorSpec(model_input.get_any_name(),
                                     tuple(int(d.get_length()) if d.is_static else "dynamic" for d in shape),
                                     _OV_TYPES.get(model_input.get_element_type().get_type_name(), "float32"))
        self._request = self._compiled.create_infer_request()

    def __enter__(self) -> "OvRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self._request = self._compiled = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=self.input_spec.dtype)
        # infer() copies the outputs out of the request's memory, which the next inference reuses
        # (share_outputs=False): that copy is the caller's to keep. A second copy of the logits (7.6 MB at
        # 360x480x11) cost ~1 ms of DeepLabV3+'s ~31 on one core. The input is only read during this
        # synchronous call, so it is shared rather than copied.
        return self._request.infer({0: batch}, share_inputs=True, share_outputs=False)[0]


def _read_properties(compiled: Any) -> dict[str, str]:  # an openvino.CompiledModel
    found = {}
    supported = set(compiled.get_property("SUPPORTED_PROPERTIES"))
    for name in RECORDED_PROPERTIES:
        if name in supported:
            value = compiled.get_property(name)
            found[name] = _hint_name(value) if name == "INFERENCE_PRECISION_HINT" else str(value).split(".")[-1]
    return found


def _hint_name(value: Any) -> str:  # an openvino.Type or a string
    text = str(value).lower()
    return {"float32": "f32", "f32": "f32", "bfloat16": "bf16", "bf16": "bf16", "float16": "f16",
            "f16": "f16"}.get(text, getattr(value, "get_type_name", lambda: text)())
