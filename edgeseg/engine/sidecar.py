"""The engine sidecar (`model.int8.engine.json`): what built an engine, for what, and whether it runs here.

The `.engine` file stays the raw bytes TensorRT serialized (trtexec and Polygraphy load it), so everything else
lives beside it: the TensorRT, CUDA and GPU it was built with, the preprocessing contract (from the ONNX
metadata), the layer precisions the engine inspector reports, hashes of the ONNX and calibration inputs, and
the build plan. A runner compares the sidecar with the live GPU and TensorRT before deserializing, because a
mismatched engine fails deep inside TensorRT with a message that does not say "rebuild".
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from edgeseg.bundle_layout import sidecar_name
from edgeseg.engine.plan import parse_tensorrt_version
from edgeseg.errors import EdgesegError, UsageError
from edgeseg.manifest import read_json

SIDECAR_FORMAT = "edgeseg-engine"
SIDECAR_SCHEMA = 1


class EngineMismatch(EdgesegError):
    """The engine was built for another GPU or TensorRT than this machine has."""


def sidecar_path(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(sidecar_name(engine_path.name))


def read_sidecar(engine_path: str | Path) -> dict:
    """The sidecar of `engine_path`; UsageError (saying how to get one) when it is missing or not edgeseg's."""
    engine_path = Path(engine_path)
    path = sidecar_path(engine_path)
    if not engine_path.is_file():
        raise UsageError(f"{engine_path} " + ("is a folder; give the .engine file" if engine_path.is_dir()
                                              else "does not exist"))
    if not path.is_file():
        raise UsageError(f"{engine_path} has no sidecar {path.name}, so nothing says which GPU and TensorRT built "
                         f"it; rebuild it with 'edgeseg engine build {_bundle_hint(engine_path)}' (after "
                         f"build_engine.sh: 'edgeseg engine sidecar {engine_path}' on the device that built it)")
    sidecar = read_json(path)
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise UsageError(f"{path} is not an edgeseg engine sidecar; rebuild the engine with "
                         f"'edgeseg engine build {_bundle_hint(engine_path)}'")
    return sidecar


def _bundle_hint(engine_path: Path) -> str:
    return str(engine_path.parent) if engine_path.parent != Path("") else "."


def check_engine_compatibility(sidecar: dict, live: dict, bundle: str = "BUNDLE") -> None:
    """Refuse an engine whose sidecar names another GPU, compute capability or TensorRT than `live`
    (both in the sidecar's shape: {"tensorrt": "10.3.0.30", "gpu": {"name": ..., "compute_capability": ...}})."""
    built_gpu, live_gpu = sidecar.get("gpu") or {}, live.get("gpu") or {}
    built_trt, live_trt = sidecar.get("tensorrt"), live.get("tensorrt")
    if not built_trt or not built_gpu.get("compute_capability"):
        raise EngineMismatch(f"the engine sidecar does not record the TensorRT and GPU that built it; "
                             f"rebuild it here with 'edgeseg engine build {bundle}'")
    rebuild = f"rebuild it here with 'edgeseg engine build {bundle}'"
    if built_gpu["compute_capability"] != live_gpu.get("compute_capability"):
        raise EngineMismatch(f"the engine was built for compute capability {built_gpu['compute_capability']} "
                             f"({built_gpu.get('name', 'unknown GPU')}) but this GPU is "
                             f"{live_gpu.get('compute_capability')} ({live_gpu.get('name')}); {rebuild}")
    if _gpu_name(built_gpu.get("name")) != _gpu_name(live_gpu.get("name")):
        # Same compute capability, other model: TensorRT may load it but tuned its kernels for another chip
        # (SM count, clocks, memory), and NVIDIA does not support moving engines between GPU models.
        raise EngineMismatch(f"the engine was built on a {built_gpu.get('name')} but this GPU is a "
                             f"{live_gpu.get('name')}; engines are tuned for one GPU model: {rebuild}")
    if not _same_tensorrt(str(built_trt), str(live_trt)):
        raise EngineMismatch(f"the engine was built with TensorRT {built_trt} but TensorRT {live_trt} is installed "
                             f"here, and engines load only in the TensorRT that built them; {rebuild}")


def _gpu_name(name: str | None) -> str:
    return " ".join(str(name or "").split()).casefold()


def _same_tensorrt(built: str, live: str) -> bool:
    """Equal on every component both versions give (at least major.minor): '10.3' matches '10.3.0.30'."""
    built_parts, live_parts = built.split("."), live.split(".")
    shared = min(len(built_parts), len(live_parts))
    if shared < 2:
        return parse_tensorrt_version(built) == parse_tensorrt_version(live)
    return built_parts[:shared] == live_parts[:shared]


# ---------------------------------------------------------------------------------------------------------------
# The engine inspector's JSON (IEngineInspector.get_engine_information(LayerInformationFormat.JSON))

def summarize_inspector(engine_information: str) -> dict:
    """Layer count, DLA vs GPU layers, and precision per layer type, from the inspector's JSON.

    With ProfilingVerbosity.DETAILED each layer is an object whose outputs carry "Format/Datatype" strings such
    as "Row major linear FP16 format" or "Thirty-two wide channel vectorized row major Int8 format"; the layers
    the DLA runs are reported with LayerType "DLA". Without DETAILED, layers are bare names and only the count
    is known. The format strings are not a stable API, so anything unrecognised is counted as "unknown".
    """
    data = json.loads(engine_information)
    layers = data.get("Layers", []) if isinstance(data, dict) else []
    detailed = [layer for layer in layers if isinstance(layer, dict)]
    if len(detailed) < len(layers):
        return {"layers": len(layers), "detailed": False}
    by_type: dict[str, Counter] = {}
    dla = 0
    for layer in detailed:
        kind = str(layer.get("LayerType", "unknown"))
        if kind.upper() == "DLA":
            dla += 1
        tensors = layer.get("Outputs") or layer.get("Inputs") or []
        format_text = tensors[0].get("Format/Datatype", "") if tensors and isinstance(tensors[0], dict) else ""
        by_type.setdefault(kind, Counter())[_precision_of(str(format_text))] += 1
    return {"layers": len(detailed), "detailed": True, "dla_layers": dla, "gpu_layers": len(detailed) - dla,
            "precision_by_layer_type": {kind: dict(sorted(counts.items())) for kind, counts in sorted(by_type.items())}}


def _precision_of(format_text: str) -> str:
    text = format_text.upper()
    for needle, precision in (("INT8", "int8"), ("FP8", "fp8"), ("BF16", "bf16"), ("FP16", "fp16"),
                              ("HALF", "fp16"), ("FP32", "fp32"), ("FLOAT", "fp32"), ("INT32", "int32"),
                              ("INT64", "int64"), ("BOOL", "bool"), ("UINT8", "uint8")):
        if needle in text:
            return "uint8" if needle == "INT8" and "UINT8" in text else precision
    return "unknown"


# ---------------------------------------------------------------------------------------------------------------
# DLA placement from the builder's log

_SECTION = re.compile(r"-+\s*Layers Running on (DLA|GPU)\s*-+", re.IGNORECASE)
_PLACED = re.compile(r"\[(DlaLayer|GpuLayer)\]\s*(.+)$")


def parse_layer_placement(lines: list[str]) -> dict:
    """Which layers TensorRT placed on the DLA and which fell back to the GPU, from the builder's messages:

        ---------- Layers Running on DLA ----------
        [DlaLayer] {ForeignNode[/stem/conv/Conv.../stage1/Relu_3]}
        ---------- Layers Running on GPU ----------
        [GpuLayer] SHUFFLE: /decode/Reshape

    (TensorRT 8.5 and later, INFO severity; trtexec prefixes them with "[I] [TRT]", which is ignored). A DLA entry
    is a subgraph (ForeignNode[first...last]) the DLA runs as one; a GPU entry is one layer, "TYPE: name"."""
    dla: list[str] = []
    gpu: list[dict] = []
    for line in lines:
        match = _PLACED.search(line)
        if match is None:
            continue
        text = match.group(2).strip()
        if match.group(1) == "DlaLayer":
            dla.append(text)
        else:
            kind, _, name = text.partition(": ")
            gpu.append({"type": kind if name else None, "name": name or kind})
    found = bool(dla or gpu) or any(_SECTION.search(line) for line in lines)
    return {"dla_subgraphs": dla, "gpu_layers": gpu, "found": found}


def placement_summary(placement: dict, dla_core: int | None) -> list[str]:
    """The placement as log lines: every DLA subgraph and every layer that fell back to the GPU."""
    if not placement.get("found"):
        return ["DLA placement: TensorRT printed no layer placement (it does from 8.5 on, at INFO)"]
    dla, gpu = placement["dla_subgraphs"], placement["gpu_layers"]
    lines = [f"DLA placement: {len(dla)} subgraph(s) on DLA core {dla_core}, {len(gpu)} layer(s) on the GPU"]
    lines += [f"  DLA: {entry}" for entry in dla]
    lines += [f"  GPU: {layer['type'] + ' ' if layer['type'] else ''}{layer['name']}" for layer in gpu]
    return lines
