"""The TensorRT build plan: every decision about how an engine is built, made without importing TensorRT.

`plan_build` is a pure function of (target, ONNX facts, options, TensorRT version). It refuses what cannot work
(fp8 on Orin, DLA on a desktop, INT8 without Q/DQ on TensorRT 11) with one clear line, and never changes a
requested precision silently. The builder applies the plan with the TensorRT API; `to_trtexec` renders the same
fields as the equivalent trtexec command, so a plan can be rebuilt, or checked, by hand on the device.

Precision, by TensorRT version:
- 11 and later: every network is strongly typed, the precision flags and the INT8 calibrator are gone, so the
  precision must already be in the ONNX graph (fp16 export, or INT8 Q/DQ from `edgeseg quantize`).
- 10: strongly typed when the graph carries its precision; an fp32 graph can still be built with the deprecated
  FP16 flag or the deprecated calibrator, with a warning in the plan.
- 8.x (JetPack 5, Xavier): flag based; INT8 from a graph without Q/DQ uses IInt8EntropyCalibrator2 and its cache.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseg.errors import UsageError
from edgeseg.target.schema import Target

REQUESTED_PRECISIONS = ("fp32", "fp16", "int8", "fp8", "best")
ONNX_PRECISIONS = ("fp32", "fp16", "int8-qdq")
MIN_TENSORRT = (8, 5)  # the oldest TensorRT still shipped for a supported board (JetPack 5.1 on Xavier)


@dataclass(frozen=True)
class StaticShape:
    """One fixed input shape: NCHW = batch x channels x height x width."""

    height: int
    width: int
    batch: int = 1


@dataclass(frozen=True)
class DynamicShape:
    """An optimization profile: the engine accepts any NCHW shape between min and max, tuned for opt."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]


@dataclass(frozen=True)
class BuildOptions:
    precision: str  # fp32 | fp16 | int8 | fp8 | best (best: the fastest the graph and target allow)
    input_name: str = "pixel_values"
    shape: StaticShape | DynamicShape | None = None  # None: the target's default input, batch 1
    channels: int = 3
    workspace_mb: int | None = None  # None: the target's default
    builder_optimization_level: int = 3  # 0-5, TensorRT's default is 3
    dla_core: int | None = None
    gpu_fallback: bool = True  # layers the DLA cannot run go to the GPU instead of failing the build
    sparse_weights: bool = False
    timing_cache: Path | None = None
    calibration_cache: Path | None = None  # legacy INT8 calibration (no Q/DQ); default: beside the ONNX
    onnx_has_qdq: bool = False  # the graph carries INT8 QuantizeLinear/DequantizeLinear (edgeseg quantize)
    onnx_precision: str = "fp32"  # fp32 | fp16 | int8-qdq: the precision the ONNX graph was exported in


@dataclass(frozen=True)
class BuildPlan:
    target: str
    target_kind: str
    compute_capability: str
    resolved_from: str | None
    onnx_path: str
    onnx_precision: str
    onnx_has_qdq: bool
    tensorrt_version: str
    requested_precision: str
    engine_precision: str  # what the engine computes in: fp32 | fp16 | int8
    strongly_typed: bool
    network_flags: tuple[str, ...]  # trt.NetworkDefinitionCreationFlag members passed to create_network
    builder_flags: tuple[str, ...]  # trt.BuilderFlag members set on the builder config
    calibrator: str | None  # "entropy2": IInt8EntropyCalibrator2, only for INT8 from a graph without Q/DQ
    calibration_cache: str | None
    workspace_mb: int
    builder_optimization_level: int | None  # None: TensorRT before 8.6 has no such setting
    dla_core: int | None
    input_name: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    timing_cache: str | None
    warnings: tuple[str, ...] = ()

    @property
    def dynamic(self) -> bool:
        return self.min_shape != self.max_shape

    @property
    def tensorrt_major(self) -> int:
        return parse_tensorrt_version(self.tensorrt_version)[0]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BuildPlan":
        """Inverse of to_dict, also after a trip through JSON (which turns tuples into lists)."""
        tuples = {f.name for f in dataclasses.fields(cls) if str(f.type).startswith("tuple")}
        return cls(**{key: tuple(value) if key in tuples else value for key, value in data.items()})

    def to_trtexec(self, engine_path: str | Path) -> list[str]:
        """The trtexec command that builds the same engine (argv list; join with spaces to print)."""
        argv = ["trtexec", f"--onnx={self.onnx_path}", f"--saveEngine={engine_path}"]
        if "STRONGLY_TYPED" in self.network_flags:  # from TensorRT 11 on it is always on and the flag is gone
            argv.append("--stronglyTyped")
        argv += [_TRTEXEC_FLAGS[flag] for flag in self.builder_flags]
        if self.calibration_cache:
            argv.append(f"--calib={self.calibration_cache}")
        # MiB is the unit with no suffix on every version; TensorRT 10 also documents the explicit 'M' suffix.
        suffix = "M" if self.tensorrt_major >= 10 else ""
        argv.append(f"--memPoolSize=workspace:{self.workspace_mb}{suffix}")
        if self.builder_optimization_level is not None:
            argv.append(f"--builderOptimizationLevel={self.builder_optimization_level}")
        if self.dla_core is not None:
            argv.append(f"--useDLACore={self.dla_core}")
        if self.timing_cache:
            argv.append(f"--timingCacheFile={self.timing_cache}")
        if self.dynamic:
            argv += [f"--minShapes={self.input_name}:{_dims(self.min_shape)}",
                     f"--optShapes={self.input_name}:{_dims(self.opt_shape)}",
                     f"--maxShapes={self.input_name}:{_dims(self.max_shape)}"]
        else:  # without min/opt/max, trtexec builds the profile from --shapes
            argv.append(f"--shapes={self.input_name}:{_dims(self.opt_shape)}")
        return argv

    def to_api_calls(self) -> list[str]:
        """The TensorRT Python API calls the builder makes for this plan, in order (for logs and review)."""
        flags = " | ".join(f"1 << int(trt.NetworkDefinitionCreationFlag.{flag})" for flag in self.network_flags)
        calls = [
            "logger = trt.Logger(trt.Logger.WARNING)",
            "builder = trt.Builder(logger)",
            f"network = builder.create_network({flags or 0})",
            "parser = trt.OnnxParser(network, logger)",
            f"parser.parse_from_file({self.onnx_path!r})",
            "config = builder.create_builder_config()",
            f"config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, {self.workspace_mb} << 20)",
        ]
        if self.builder_optimization_level is not None:
            calls.append(f"config.builder_optimization_level = {self.builder_optimization_level}")
        calls += [f"config.set_flag(trt.BuilderFlag.{flag})" for flag in self.builder_flags]
        if self.calibrator:
            calls.append(f"config.int8_calibrator = EntropyCalibrator2(cache_file={self.calibration_cache!r})"
                         "  # a trt.IInt8EntropyCalibrator2")
        if self.dla_core is not None:
            calls += ["config.default_device_type = trt.DeviceType.DLA", f"config.DLA_core = {self.dla_core}"]
        if self.timing_cache:
            calls += [f"timing_cache = config.create_timing_cache(<bytes of {self.timing_cache!r}, or b''>)",
                      "config.set_timing_cache(timing_cache, ignore_mismatch=False)"]
        calls += [
            "profile = builder.create_optimization_profile()",
            f"profile.set_shape({self.input_name!r}, {self.min_shape}, {self.opt_shape}, {self.max_shape})",
            "config.add_optimization_profile(profile)",
        ]
        if self.calibrator and self.dynamic:
            calls.append("config.set_calibration_profile(profile)")
        calls.append("engine_bytes = builder.build_serialized_network(network, config)")
        if self.timing_cache:
            calls.append(f"write {self.timing_cache!r} <- config.get_timing_cache().serialize()")
        return calls


_TRTEXEC_FLAGS = {"FP16": "--fp16", "INT8": "--int8", "GPU_FALLBACK": "--allowGPUFallback",
                  "SPARSE_WEIGHTS": "--sparsity=enable"}


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(dim) for dim in shape)


def parse_tensorrt_version(text: str) -> tuple[int, int, int]:
    """'10.3' or '10.3.0.30' -> (10, 3, 0)."""
    try:
        parts = [int(part) for part in str(text).split(".")[:3]]
    except ValueError:
        raise UsageError(f"TensorRT version {text!r} is not like 10.3 or 8.5.2") from None
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------------
# Deciding

def plan_build(target: Target, onnx_path: str | Path, options: BuildOptions,
               tensorrt_version: str | None = None) -> BuildPlan:
    """Decide how to build an engine for `target` from the ONNX at `onnx_path`; raise UsageError if it cannot."""
    if not target.builds_engines:
        raise UsageError(f"target {target.name} runs the ONNX model with ONNX Runtime; there is no TensorRT engine "
                         "to build: deploy the .onnx file instead")
    if target.compute_capability is None:
        raise UsageError(f"target {target.name} has not been read from a device; load it with load_target()")
    version_text = tensorrt_version or target.default_tensorrt
    version = parse_tensorrt_version(version_text)
    if version[:2] < MIN_TENSORRT:
        raise UsageError(f"TensorRT {version_text} is too old; edgeseg builds with TensorRT 8.5 or newer")
    _check_options(options)
    warnings: list[str] = []
    _check_tensorrt_on_board(target, version, version_text, warnings)

    graph = "int8" if options.onnx_has_qdq else options.onnx_precision
    engine_precision = _engine_precision(target, options, graph, version[0], warnings)
    uses_dla = _check_dla(target, options, engine_precision, version, version_text)
    if options.sparse_weights and not target.sparsity:
        raise UsageError(f"target {target.name} (compute capability {target.compute_capability}) has no sparse tensor "
                         "cores (Ampere or newer); drop the sparse-weights option")

    if uses_dla and graph == "int8" and version[0] < 10:  # TensorRT 8 developer guide: no explicit quantization on DLA
        warnings.append("TensorRT 8 runs no Q/DQ (explicitly quantized) layers on the DLA; with GPU fallback they run "
                        "on the GPU, so check the layer placement in the build log")
    strongly_typed, network_flags = _typing(graph, version[0], uses_dla, warnings)
    builder_flags: list[str] = []
    calibrator = calibration_cache = None
    if not strongly_typed:
        builder_flags += _precision_flags(engine_precision, options, graph, target)
        if engine_precision == "int8" and graph != "int8":
            calibrator = "entropy2"
            cache = options.calibration_cache or Path(onnx_path).with_suffix(".calibration.cache")
            calibration_cache = str(cache)
            warnings.append(f"INT8 by calibration: the builder reads {cache}, or writes it after calibrating; "
                            "trtexec can only read it")
            if version[0] >= 10:
                warnings.append("INT8 calibration is deprecated since TensorRT 10.1 and removed in 11; "
                                "run 'edgeseg quantize' for a Q/DQ model")
        if "FP16" in builder_flags and graph == "fp32" and version[0] >= 10:
            warnings.append("BuilderFlag.FP16 is deprecated in TensorRT 10 and removed in 11; "
                            "export the fp16 ONNX to build a strongly typed engine")
    if uses_dla and options.gpu_fallback:
        builder_flags.append("GPU_FALLBACK")
    if options.sparse_weights:
        builder_flags.append("SPARSE_WEIGHTS")

    level: int | None = options.builder_optimization_level
    if version[:2] < (8, 6):  # the setting arrived in TensorRT 8.6
        if level != 3:
            warnings.append(f"TensorRT {version_text} has no builder optimization level; {level} is ignored")
        level = None

    min_shape, opt_shape, max_shape = _profile(options, target)
    if uses_dla and min_shape != max_shape:
        raise UsageError("the DLA needs a static input shape; give one size and batch, or drop the DLA core")

    return BuildPlan(
        target=target.name, target_kind=target.kind, compute_capability=target.compute_capability,
        resolved_from=target.resolved_from, onnx_path=str(onnx_path), onnx_precision=options.onnx_precision,
        onnx_has_qdq=options.onnx_has_qdq, tensorrt_version=version_text, requested_precision=options.precision,
        engine_precision=engine_precision, strongly_typed=strongly_typed, network_flags=network_flags,
        builder_flags=tuple(builder_flags), calibrator=calibrator, calibration_cache=calibration_cache,
        workspace_mb=options.workspace_mb or target.default_workspace_mb, builder_optimization_level=level,
        dla_core=options.dla_core, input_name=options.input_name, min_shape=min_shape, opt_shape=opt_shape,
        max_shape=max_shape, timing_cache=str(options.timing_cache) if options.timing_cache else None,
        warnings=tuple(warnings),
    )


def _check_options(options: BuildOptions) -> None:
    if options.precision not in REQUESTED_PRECISIONS:
        raise UsageError(f"precision {options.precision!r} is not one of {', '.join(REQUESTED_PRECISIONS)}")
    if options.onnx_precision not in ONNX_PRECISIONS:
        raise UsageError(f"ONNX precision {options.onnx_precision!r} is not one of {', '.join(ONNX_PRECISIONS)}")
    if options.onnx_precision == "int8-qdq" and not options.onnx_has_qdq:
        raise UsageError("the ONNX precision says int8-qdq but the graph has no Q/DQ nodes; re-run 'edgeseg quantize'")
    if not 0 <= options.builder_optimization_level <= 5:
        raise UsageError(f"builder optimization level {options.builder_optimization_level} is not between 0 and 5")
    if options.workspace_mb is not None and options.workspace_mb <= 0:
        raise UsageError(f"workspace {options.workspace_mb} MiB must be greater than 0")
    if not options.input_name:
        raise UsageError("the input name is empty; the edgeseg exporter names it 'pixel_values'")


def _check_tensorrt_on_board(target: Target, version: tuple[int, int, int], text: str, warnings: list[str]) -> None:
    # Jetsons get TensorRT with JetPack; an engine planned for another version will not load on the board.
    shipped = {parse_tensorrt_version(known)[:2] for known in target.tensorrt_versions}
    if target.kind == "jetson" and shipped and version[:2] not in shipped:
        releases = ", ".join(f"JetPack {r.version}: TensorRT {r.tensorrt}" for r in target.jetpack)
        warnings.append(f"{target.name} ships TensorRT with JetPack ({releases}); "
                        f"an engine for TensorRT {text} runs only where that version is installed")


def _engine_precision(target: Target, options: BuildOptions, graph: str, major: int, warnings: list[str]) -> str:
    """The precision the engine will compute in; errors where the request and the graph disagree."""
    requested = options.precision
    if requested != "best" and not target.supports(requested):
        raise UsageError(f"target {target.name} does not support {requested} (it supports "
                         f"{', '.join(target.precisions)}); choose one of those")
    if graph == "int8" and not target.supports("int8"):
        raise UsageError(f"the ONNX carries INT8 Q/DQ but target {target.name} has no INT8; use the fp16 or fp32 ONNX")
    if requested == "fp8":  # supported by the target, but edgeseg writes no FP8 Q/DQ graphs
        raise UsageError("FP8 engines are built from FP8 Q/DQ ONNX graphs, which edgeseg does not produce; "
                         "build fp16 or int8 instead")
    if requested == "best":
        if graph != "fp32":
            return graph
        if major >= 11 or not target.supports("fp16"):
            warnings.append("building fp32: the ONNX is fp32; export the fp16 ONNX or run 'edgeseg quantize' "
                            "for a faster engine")
            return "fp32"
        warnings.append("best on an fp32 ONNX builds fp16; INT8 needs Q/DQ ('edgeseg quantize') or "
                        "an int8 build with calibration")
        return "fp16"
    if requested == "int8" and graph == "fp16":  # calibration runs on the fp32 graph
        raise UsageError("INT8 from the fp16 ONNX needs Q/DQ: run 'edgeseg quantize', or calibrate from the fp32 ONNX")
    if graph != "fp32" and requested != graph:
        carried = "INT8 Q/DQ" if graph == "int8" else "fp16"
        raise UsageError(f"the ONNX already carries {carried}, which decides the precision; request {graph}, "
                         f"or build from the {requested} ONNX")
    if major >= 11 and requested != graph:  # no precision flags and no calibrator any more
        if requested == "int8":
            raise UsageError("TensorRT 11 builds INT8 only from Q/DQ graphs; run 'edgeseg quantize' first")
        raise UsageError("TensorRT 11 takes the precision from the graph; export the fp16 ONNX first")
    return requested


def _check_dla(target: Target, options: BuildOptions, precision: str, version: tuple[int, int, int],
               text: str) -> bool:
    core = options.dla_core
    if core is None:
        return False
    if target.family:
        raise UsageError(f"{target.name} is a family of modules and only some have a DLA, so the DLA core is "
                         "chosen on the device: 'edgeseg engine build . --dla-core N' there")
    if target.dla_cores == 0:
        resolved = f" ({target.resolved_from})" if target.resolved_from and target.family is None and \
            "resolved on this device" in target.resolved_from else ""
        raise UsageError(f"target {target.name} has no DLA{resolved}; drop the DLA core option "
                         "(DLA is on Jetson AGX Orin, Orin NX and the Xaviers)")
    if isinstance(core, bool) or not isinstance(core, int) or not 0 <= core < target.dla_cores:
        raise UsageError(f"DLA core {core} does not exist on {target.name}; "
                         f"it has {target.dla_cores}: 0 to {target.dla_cores - 1}")
    if precision not in ("fp16", "int8"):
        raise UsageError(f"the DLA runs fp16 or int8, not {precision}; choose one of those for a DLA build")
    # TensorRT 10.7 was the last 10.x with DLA; 11.0 to 11.4.0 had none on Jetson; 11.4.1 brought it back.
    if (10, 8, 0) <= version < (11, 4, 1):
        raise UsageError(f"TensorRT {text} cannot build for the DLA (10.7 was the last 10.x with DLA, and 11.4.1 "
                         "brought it back on AGX Orin); use the TensorRT of JetPack 5 or 6")
    return True


def _typing(graph: str, major: int, uses_dla: bool, warnings: list[str]) -> tuple[bool, tuple[str, ...]]:
    """(strongly typed?, network creation flags)."""
    if major >= 11:
        return True, ()  # always strongly typed; the flag is deprecated and ignored
    if major >= 10 and graph != "fp32":
        if uses_dla:  # strongly typed DLA builds arrived with TensorRT 11.4.1
            warnings.append("TensorRT 10 builds DLA engines from weakly typed networks; "
                            "the graph's precision is set with builder flags instead")
            return False, ()
        return True, ("STRONGLY_TYPED",)
    if major >= 10:
        return False, ()  # explicit batch is implicit from TensorRT 10 on
    return False, ("EXPLICIT_BATCH",)  # TensorRT 8.x needs it for ONNX


def _precision_flags(precision: str, options: BuildOptions, graph: str, target: Target) -> list[str]:
    if precision == "fp16":
        return ["FP16"]
    if precision == "int8":
        # FP16 as well where the graph's float parts are fp16, or where 'best' lets the non-quantized layers run
        # in fp16; a plain int8 request keeps them in fp32.
        wants_fp16 = options.onnx_precision == "fp16" or options.precision == "best"
        return ["INT8", "FP16"] if wants_fp16 and target.supports("fp16") else ["INT8"]
    return []


def _profile(options: BuildOptions, target: Target) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    shape = options.shape
    if shape is None:
        height, width = target.input_size
        shape = StaticShape(height, width)
    if isinstance(shape, StaticShape):
        dims = (shape.batch, options.channels, shape.height, shape.width)
        if min(dims) < 1:
            raise UsageError(f"input shape {_dims(dims)} has a dimension below 1")
        return dims, dims, dims
    profile = (tuple(shape.min), tuple(shape.opt), tuple(shape.max))
    if any(len(dims) != 4 or min(dims) < 1 for dims in profile):
        raise UsageError("each of min, opt and max must be four positive numbers: batch, channels, height, width")
    if not all(low <= mid <= high for low, mid, high in zip(*profile)):
        raise UsageError(f"shapes must grow from min to opt to max: {' <= '.join(_dims(d) for d in profile)}")
    return profile
