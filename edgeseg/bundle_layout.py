"""The one place a build bundle's file names live, and the rule for which of its artifacts a device runs.

A bundle (edgeseg build, the bench cache, a kit copied to a device) is a folder of fixed names:

  model.onnx  model.fp16.onnx  model.int8.onnx      the precisions (ONNX, contract in model.onnx's metadata)
  model.int8-<profile>.onnx                          an INT8 graph of another quantization profile (bench cache)
  model.int8.ov.xml (+ .bin)                         NNCF INT8 for OpenVINO (CPU bundles)
  <artifact>.json                                    each artifact's manifest / an engine's sidecar
  calibration.json  manifest.json  report.json  report.md
  model.<precision>.engine (+ .engine.json)          a TensorRT engine and its sidecar
  target.toml plan.json build_engine.sh README.md    the cross-build kit (+ modules.json, targets/ for a family)
  nvinfer_config.txt labels.txt model.<p>.deepstream.onnx   DeepStream; nvinfer writes its own engines beside them

Every module asks here instead of spelling a name. No torch, no onnx: the names are constants and pure functions;
the choice functions only list the bundle and read its small JSON files. Top level rather than under engine/
because the CPU side (runners, bench, cpu_variants, build) reads the same names and must not need the engine
package.

Which engine a device runs (`choose_engine`): only edgeseg's own `model.<precision>.engine` files count (nvinfer's
`..._b1_gpu0_fp16.engine` have no sidecar); the precision the bundle records (manifest.json's engine, else its
engine_precision setting, else report.json's engine) wins when that engine is there; otherwise the first present
of ENGINE_PRECEDENCE (int8 > fp16 > fp32: the build's default and the fastest). Never the alphabetical first.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
ONNX_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
OV_INT8_FILE = "model.int8.ov.xml"  # NNCF INT8 for OpenVINO (edgeseg.quantize_ov); its weights in model.int8.ov.bin
CPU_FILES = {**ONNX_FILES, "int8-nncf": OV_INT8_FILE}  # every file a CPU variant runs, by role
FP32_ONNX = ONNX_FILES["fp32"]  # the reference graph; its metadata carries the preprocessing contract

CALIBRATION_MANIFEST = "calibration.json"
MANIFEST_FILE = "manifest.json"  # the build's manifest (stage "build")
REPORT_JSON, REPORT_MD = "report.json", "report.md"
PARTIAL_MARKER = ".edgeseg-partial"  # in `<out>.partial` while a build assembles the bundle
PRUNED_WEIGHTS = "pruned.safetensors"  # build --prune: the pruned checkpoint the bundle is exported from
PRUNED_HF_DIR = "pruned-hf"  # build --prune of a Hugging Face model: the pruned model directory
BUILD_FILES = (MANIFEST_FILE, REPORT_JSON, REPORT_MD)

# The cross-build kit (engine.bundle.write_kit)
PLAN_FILE, TARGET_FILE, SCRIPT_FILE, README_FILE = "plan.json", "target.toml", "build_engine.sh", "README.md"
MODULES_FILE, FAMILY_TARGETS_DIR = "modules.json", "targets"  # family kits only
KIT_FILES = (TARGET_FILE, PLAN_FILE, SCRIPT_FILE, README_FILE)
TIMING_CACHE_PER_TARGET = "timing.{target}.cache"  # timings are only valid on the GPU that made them

# DeepStream (engine.deepstream)
NVINFER_CONFIG, LABELS_FILE = "nvinfer_config.txt", "labels.txt"

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
ENGINE_PRECEDENCE = ("int8", "fp16", "fp32")  # which engine runs when the bundle records none that is there
_ENGINE_NAME = re.compile(r"model\.(fp32|fp16|int8)\.engine")


def onnx_name(precision: str, profile: str | None = None) -> str:
    """The ONNX file of `precision`; with `profile`, INT8 of that quantization profile beside the default one."""
    if precision not in ONNX_FILES:
        raise ValueError(f"no ONNX file for precision {precision!r}; known: {', '.join(ONNX_FILES)}")
    if profile is None:
        return ONNX_FILES[precision]
    if precision != "int8":
        raise ValueError(f"only INT8 files differ by quantization profile, not {precision}")
    return f"model.int8-{profile}.onnx"


def artifact_bytes(path: Path) -> int:
    """The size of the model an artifact path names: an OpenVINO IR is its .xml (the graph) and the .bin beside
    it (the weights, nearly all of it); anything else is its one file."""
    size = path.stat().st_size
    weights = path.with_suffix(".bin")
    if path.suffix == ".xml" and weights.is_file():
        size += weights.stat().st_size
    return size


def sidecar_name(artifact: str) -> str:
    """An artifact's manifest, or an engine's sidecar: the file name with .json added (model.int8.engine.json)."""
    return artifact + ".json"


def engine_name(precision: str) -> str:
    return f"model.{precision}.engine"


def engine_precision(name: str) -> str | None:
    """The precision of one of edgeseg's engine names, None for any other file (nvinfer's engines, a user's)."""
    match = _ENGINE_NAME.fullmatch(name)
    return match.group(1) if match else None


def deepstream_source_onnx(precision: str) -> str:
    """The ONNX a DeepStream config of `precision` starts from: nvinfer wants a calibration cache for INT8 and
    falls back to FP16 without one, so int8 bundles use the fp16 graph (engine.deepstream)."""
    return ONNX_FILES["fp16" if precision == "int8" else precision]


def deepstream_onnx_name(precision: str) -> str:
    """That graph with a Softmax appended, which nvinfer builds its engine from."""
    return deepstream_source_onnx(precision).removesuffix(".onnx") + ".deepstream.onnx"


def nvinfer_engine_name(onnx_name: str, network_mode: int, batch: int = 1, gpu: int = 0) -> str:
    """The file nvinfer serialises the engine it builds to (and reads on the next run): <onnx>_b1_gpu0_fp16.engine."""
    mode = {0: "fp32", 1: "int8", 2: "fp16"}[network_mode]
    return f"{onnx_name}_b{batch}_gpu{gpu}_{mode}.engine"


@dataclass(frozen=True)
class EngineChoice:
    name: str  # file name in the bundle
    precision: str
    reason: str  # why this one, for the log
    present: tuple[str, ...]  # every edgeseg engine in the bundle, this one included
    recorded: str | None = None  # the precision the bundle records, if any

    @property
    def ambiguous(self) -> bool:
        return len(self.present) > 1

    @property
    def recorded_missing(self) -> bool:
        """The bundle records another precision whose engine is not there: this one runs instead."""
        return self.recorded is not None and self.recorded != self.precision


def choose_engine(names: Iterable[str], recorded: str | None = None) -> EngineChoice | None:
    """The engine to run among file names `names` (pure): the recorded precision's when it is there, else the
    first of ENGINE_PRECEDENCE present. None when no edgeseg engine is among them."""
    present = {engine_precision(name): name for name in names if engine_precision(name)}
    ordered = tuple(present[p] for p in ENGINE_PRECEDENCE if p in present)
    if not ordered:
        return None
    if recorded in present:
        return EngineChoice(present[recorded], recorded, f"the bundle's recorded engine precision ({recorded})",
                            ordered, recorded)
    precision = next(p for p in ENGINE_PRECEDENCE if p in present)
    reason = " > ".join(ENGINE_PRECEDENCE) + " precedence"
    if recorded is not None:
        reason += f" (the recorded {recorded} engine is not there)"
    return EngineChoice(present[precision], precision, reason, ordered, recorded)


def recorded_engine_precision(bundle: Path) -> str | None:
    """The engine precision a bundle records: manifest.json's built engine, else its engine_precision setting
    (a kit finished on the device), else report.json's engine. None when nothing says (or it is unreadable)."""
    manifest = _read_object(bundle / MANIFEST_FILE)
    engine = manifest.get("engine") if isinstance(manifest.get("engine"), dict) else {}
    settings = manifest.get("settings") if isinstance(manifest.get("settings"), dict) else {}
    report = _read_object(bundle / REPORT_JSON)
    report_engine = report.get("engine") if isinstance(report.get("engine"), dict) else {}
    for candidate in (engine_precision(str(engine.get("engine") or "")), settings.get("engine_precision"),
                      engine_precision(str(report_engine.get("engine") or ""))):
        if candidate in PRECISIONS:
            return candidate
    return None


def bundle_engine(bundle: Path) -> Path | None:
    """The engine a device runs from `bundle` (choose_engine on its files), logged when there was a choice."""
    names = [path.name for path in bundle.iterdir() if path.is_file()] if bundle.is_dir() else []
    choice = choose_engine(names, recorded_engine_precision(bundle))
    if choice is None:
        return None
    if choice.ambiguous or choice.recorded_missing:
        say = log.warning if choice.recorded_missing else log.info
        say("%s holds %s: running %s, by %s; give the .engine file to run another", bundle,
            ", ".join(choice.present), choice.name, choice.reason)
    return bundle / choice.name


@dataclass(frozen=True)
class ArtifactToRun:
    path: Path
    backend: str  # "trt", "ort-cpu", "ov-cpu", or "auto" (open_runner then goes by the file and the device)
    hint: str = "f32"  # OpenVINO's inference precision for float layers


def artifact_to_run(bundle: Path, device: str = "auto", backend: str = "auto") -> ArtifactToRun:
    """What a device runs from a bundle: its engine (bundle_engine) where a GPU may be used, else the default CPU
    variant of its report.json (edgeseg.cpu_variants: the fastest within its accuracy budget, measured at build
    time; with backend ort-cpu / ov-cpu the fastest of that backend), else fallback_onnx."""
    from edgeseg.cpu_variants import best_variant
    from edgeseg.errors import UsageError

    engine = bundle_engine(bundle) if backend in ("auto", "trt") and device in ("auto", "cuda") else None
    if engine is not None:
        return ArtifactToRun(engine, "trt")
    if backend == "trt":
        raise UsageError(f"{bundle} holds no TensorRT engine; build one with 'edgeseg engine build {bundle}'")
    if device != "cuda" and backend in ("auto", "ort-cpu", "ov-cpu"):
        variant = best_variant(bundle, None if backend == "auto" else backend)
        if variant is not None:
            return ArtifactToRun(bundle / variant.file, variant.backend, variant.hint or "f32")
    onnx = fallback_onnx(bundle)
    if onnx is None:
        raise UsageError(f"{bundle} holds no {FP32_ONNX} or engine; is it an edgeseg build bundle?")
    return ArtifactToRun(onnx, backend)


def fallback_onnx(bundle: Path) -> Path | None:
    """The ONNX a CPU runs from a bundle whose report names no default variant: the first of ENGINE_PRECEDENCE
    present (INT8, FP16, FP32), the same order engines follow."""
    for precision in ENGINE_PRECEDENCE:
        path = bundle / ONNX_FILES[precision]
        if path.is_file():
            return path
    return None


def _read_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
