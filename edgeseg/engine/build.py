"""Build a TensorRT engine from a BuildPlan with the TensorRT Python API (imported lazily: the 'trt' extra).

Every decision is already in the plan (engine.plan); this module only makes the calls
`BuildPlan.to_api_calls()` lists, and records the result: the raw serialized engine (no bytes added, so trtexec
and Polygraphy load it too) and its sidecar `<engine>.json` (engine.sidecar). Relative paths in the plan (the
timing and calibration caches) are relative to `base_dir`, the bundle directory, so a bundle can move.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any  # Any: TensorRT objects (tensorrt is imported lazily, maybe absent)

from edgeseg.engine.calibrator import CalibrationFeed, make_trt_calibrator
from edgeseg.engine.host import live_environment, primary_context
from edgeseg.engine.onnx_facts import read_onnx_facts
from edgeseg.engine.plan import BuildPlan, parse_tensorrt_version
from edgeseg.engine.sidecar import (SIDECAR_FORMAT, SIDECAR_SCHEMA, parse_layer_placement, placement_summary,
                                    sidecar_path, summarize_inspector)
from edgeseg.errors import EdgesegError, UsageError
from edgeseg.lazy import lazy_import
from edgeseg.manifest import atomic_path, library_versions, now_utc, sha256_file, write_json

_log = logging.getLogger(__name__)


class EngineBuildError(EdgesegError):
    """TensorRT could not parse the ONNX model or build the engine."""


def build_engine(plan: BuildPlan, onnx_path: str | os.PathLike, engine_path: str | os.PathLike,
                 calibration: CalibrationFeed | None = None, *,
                 calibration_manifest: str | os.PathLike | None = None,
                 base_dir: str | os.PathLike | None = None) -> dict:
    """Build the engine `plan` describes from `onnx_path`, write it to `engine_path` plus its sidecar, and return
    the sidecar. `calibration` feeds the legacy INT8 calibrator when the plan has one; `calibration_manifest` is
    the calibration set behind the build (recorded by sha256); `base_dir` defaults to the engine's folder."""
    trt = lazy_import("tensorrt")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    base = Path(base_dir) if base_dir is not None else engine_path.parent
    installed = str(trt.__version__)
    if parse_tensorrt_version(installed)[:2] != parse_tensorrt_version(plan.tensorrt_version)[:2]:
        raise UsageError(f"the plan is for TensorRT {plan.tensorrt_version} but {installed} is installed; "
                         "plan again for this TensorRT ('edgeseg engine build BUNDLE' does it)")
    if plan.calibrator and calibration is None:
        raise UsageError("this plan calibrates INT8 in TensorRT and needs the calibration images; give the "
                         "calibration set (calibration.json and --data-root)")
    facts = read_onnx_facts(onnx_path)
    if facts.preprocessing is None:
        raise UsageError(f"{onnx_path.name} carries no edgeseg preprocessing metadata; export it with 'edgeseg export'")
    live = live_environment()
    # The old sidecar goes first: an engine without one is refused by the runner, a stale one would mislead it.
    sidecar_path(engine_path).unlink(missing_ok=True)

    # pycuda allocates the calibration batches; it must use the context TensorRT uses (the primary one).
    context = primary_context() if plan.calibrator else contextlib.nullcontext()
    with context:
        result = _build(trt, plan, onnx_path, engine_path, base, calibration)
    sidecar = compose_sidecar(plan, onnx_path, engine_path, base, live, built_by="edgeseg engine build",
                              layers=result["layers"], timing_cache=result["timing_cache"],
                              build_seconds=result["seconds"], calibration_manifest=calibration_manifest,
                              calibration_summary=result["calibration"])
    write_json(sidecar_path(engine_path), sidecar)
    _log.info(f"built {engine_path.name} in {result['seconds']:.0f} s: {plan.engine_precision} for {plan.target} "
              f"with TensorRT {live['tensorrt']} on {live['gpu']['name']}")
    return sidecar


def record_trtexec_engine(plan: BuildPlan, onnx_path: str | os.PathLike, engine_path: str | os.PathLike,
                          *, calibration_manifest: str | os.PathLike | None = None,
                          base_dir: str | os.PathLike | None = None) -> dict:
    """Write the sidecar of an engine trtexec built from `plan` (build_engine.sh) on this machine: the engine
    must load in this TensorRT, and the live GPU and TensorRT are what the sidecar records."""
    trt = lazy_import("tensorrt")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    base = Path(base_dir) if base_dir is not None else engine_path.parent
    if not engine_path.is_file():
        raise UsageError(f"{engine_path} does not exist; build it first (./build_engine.sh)")
    facts = read_onnx_facts(onnx_path)
    if facts.preprocessing is None:
        raise UsageError(f"{onnx_path.name} carries no edgeseg preprocessing metadata; export it with 'edgeseg export'")
    live = live_environment()
    logger = _logger(trt)
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise EngineBuildError(f"{engine_path.name} does not load in TensorRT {trt.__version__} on this GPU; "
                               "rebuild it here (./build_engine.sh or 'edgeseg engine build .')")
    sidecar = compose_sidecar(plan, onnx_path, engine_path, base, live, built_by="trtexec (build_engine.sh)",
                              layers=_inspect(trt, engine), timing_cache=None, build_seconds=None,
                              calibration_manifest=calibration_manifest, calibration_summary=None)
    write_json(sidecar_path(engine_path), sidecar)
    return sidecar  # the caller says what was written (the CLI on stdout, as the command's result)


def compose_sidecar(plan: BuildPlan, onnx_path: Path, engine_path: Path, base: Path, live: dict, *, built_by: str,
                    layers: dict, timing_cache: dict | None, build_seconds: float | None,
                    calibration_manifest: str | os.PathLike | None, calibration_summary: dict | None) -> dict:
    """The sidecar of a built engine (pure: everything measured is passed in)."""
    facts = read_onnx_facts(onnx_path)
    return {
        "format": SIDECAR_FORMAT,
        "schema": SIDECAR_SCHEMA,
        "created": now_utc(),
        "built_by": built_by,
        "engine": {"path": engine_path.name, "sha256": sha256_file(engine_path),
                   "bytes": engine_path.stat().st_size},
        "target": plan.target,
        "precision": plan.engine_precision,
        "requested_precision": plan.requested_precision,
        "tensorrt": live["tensorrt"],
        "cuda": live.get("cuda"),
        "gpu": live["gpu"],
        "dla_core": plan.dla_core,
        "model": facts.metadata.get("edgeseg.model"),
        "preprocessing": facts.preprocessing,
        "output": facts.output_kind,
        "input": {"name": plan.input_name, "dtype": facts.input_dtype, "min_shape": list(plan.min_shape),
                  "opt_shape": list(plan.opt_shape), "max_shape": list(plan.max_shape)},
        "onnx": {"path": _relative(onnx_path, base), "sha256": sha256_file(onnx_path),
                 "precision": plan.onnx_precision, "qdq": plan.onnx_has_qdq},
        "calibration": _calibration_record(calibration_manifest, plan, base, calibration_summary),
        "layers": layers,
        "timing_cache": timing_cache,
        "build_seconds": build_seconds,
        "plan": plan.to_dict(),
        "versions": library_versions("tensorrt", "pycuda", "numpy"),
        "host": {"machine": platform.machine(), "node": platform.node()},
    }


def _build(trt: Any, plan: BuildPlan, onnx_path: Path, engine_path: Path, base: Path,
           calibration: CalibrationFeed | None) -> dict:
    logger = _logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_one_line(parser.get_error(index)) for index in range(parser.num_errors)]
        for error in errors:
            _log.info(f"ONNX parser: {error}")
        raise EngineBuildError(f"TensorRT {trt.__version__} cannot parse {onnx_path.name} "
                               f"({len(errors)} error{'s' * (len(errors) != 1)}); first: "
                               f"{errors[0] if errors else 'no message'}")
    profile = _check_input(builder, network, plan)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mb << 20)
    if plan.builder_optimization_level is not None:
        config.builder_optimization_level = plan.builder_optimization_level
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    # DETAILED makes the engine inspector report each layer's precision for the sidecar (names only otherwise).
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if plan.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    dla_capable = None
    if plan.dla_core is not None:  # what the builder may place on the DLA, before it decides
        dla_capable = sum(bool(config.can_run_on_DLA(network.get_layer(i))) for i in range(network.num_layers))
    if profile is not None:
        config.add_optimization_profile(profile)
    timing_record = _load_timing_cache(config, _resolve(plan.timing_cache, base))
    if plan.calibrator:
        config.int8_calibrator = make_trt_calibrator(calibration)
        if profile is not None:
            config.set_calibration_profile(profile)

    _log.info(f"building {engine_path.name} ({plan.engine_precision}, TensorRT {trt.__version__}); this takes minutes")
    started = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    seconds = round(time.monotonic() - started, 1)
    # A calibrator callback's exception is the real cause of a failed build: raise it before anything else.
    calibration_summary = calibration.finish() if plan.calibrator and calibration is not None else None
    if serialized is None:
        detail = f": {logger.errors[-1]}" if getattr(logger, "errors", None) else "; see TensorRT's messages above"
        raise EngineBuildError(f"TensorRT could not build the {plan.engine_precision} engine for {plan.target}{detail}")

    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)  # proves the bytes load before they are kept
    if engine is None:
        raise EngineBuildError(f"TensorRT built {engine_path.name} but cannot load it back; see its messages above")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(serialized)  # IHostMemory exposes the buffer protocol: the bytes as TensorRT wrote them
    if timing_record is not None:
        timing_path = _resolve(plan.timing_cache, base)
        with atomic_path(timing_path) as tmp:
            tmp.write_bytes(config.get_timing_cache().serialize())
        timing_record["saved"] = True
    layers = _inspect(trt, engine)
    if dla_capable is not None:
        layers["network_layers_dla_capable"] = dla_capable
        layers["network_layers"] = network.num_layers
        placement = parse_layer_placement(logger.placement)
        layers["placement"] = placement
        for line in placement_summary(placement, plan.dla_core):
            _log.info(line)
    return {"seconds": seconds, "layers": layers, "timing_cache": timing_record, "calibration": calibration_summary}


def _logger(trt: Any) -> Any:
    """A trt.ILogger that passes warnings and errors to this module's logger and keeps the errors for the failure
    message."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.placement: list[str] = []  # the builder's "Layers Running on DLA/GPU" report (INFO)

        def log(self, severity: Any, message: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(_one_line(message))
            if "Layers Running on" in message or "[DlaLayer]" in message or "[GpuLayer]" in message:
                self.placement.append(_one_line(message))
            if int(severity) <= int(trt.ILogger.Severity.WARNING):  # lower is more severe
                _log.info(f"TensorRT {severity.name.lower()}: {_one_line(message)}")

    return Logger()


def _check_input(builder: Any, network: Any, plan: BuildPlan) -> Any:
    """The optimization profile for a dynamic input (None for a static one, after checking it is the plan's)."""
    if network.num_inputs != 1:
        raise UsageError(f"the ONNX model has {network.num_inputs} inputs; edgeseg engines take one image batch")
    tensor = network.get_input(0)
    if tensor.name != plan.input_name:
        raise UsageError(f"the ONNX input is named {tensor.name!r} but the plan says {plan.input_name!r}; plan again")
    dims = tuple(tensor.shape)
    if all(dim > 0 for dim in dims):
        if dims != plan.min_shape or dims != plan.max_shape:
            raise UsageError(f"the ONNX input is fixed at {'x'.join(map(str, dims))} but the plan asks for "
                             f"{'x'.join(map(str, plan.opt_shape))}; export at that size or plan for the fixed one")
        return None
    profile = builder.create_optimization_profile()
    profile.set_shape(plan.input_name, plan.min_shape, plan.opt_shape, plan.max_shape)
    return profile


def _load_timing_cache(config: Any, path: Path | None) -> dict | None:
    """Start the build from the saved timing cache (tactic timings) when there is one; it is saved again after."""
    if path is None:
        return None
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob)
    loaded = bool(blob)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        _log.info(f"timing cache {path.name} comes from another GPU or TensorRT; starting a new one")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
        loaded = False
    elif loaded:
        _log.info(f"reusing timing cache {path.name}")
    return {"path": path.name, "loaded": loaded, "saved": False}


def _inspect(trt: Any, engine: Any) -> dict:
    """Layer precisions and placement from the engine inspector; best effort: the build stands without it."""
    try:
        inspector = engine.create_engine_inspector()
        return summarize_inspector(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    except Exception as exc:  # inspector formats and APIs differ between TensorRT versions
        return {"error": f"{type(exc).__name__}: {_one_line(exc)}"}


def _calibration_record(manifest: str | os.PathLike | None, plan: BuildPlan, base: Path,
                        summary: dict | None) -> dict | None:
    if manifest is None and plan.calibration_cache is None:
        return None
    record: dict = {"method": "entropy2 in TensorRT" if plan.calibrator else "Q/DQ in the ONNX graph"}
    if manifest is not None and Path(manifest).is_file():
        record.update(manifest=_relative(Path(manifest), base), sha256=sha256_file(manifest))
    cache = _resolve(plan.calibration_cache, base)
    if cache is not None and cache.is_file():
        record.update(cache=plan.calibration_cache, cache_sha256=sha256_file(cache))
    if summary:
        record.update(summary)
    return record


def _resolve(path: str | None, base: Path) -> Path | None:
    if not path:
        return None
    candidate = Path(path)
    return candidate if candidate.is_absolute() else base / candidate


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return path.name


def _one_line(value: object) -> str:
    text = str(value).strip()
    if not text and hasattr(value, "desc"):  # onnx parser errors: ParserError.desc()
        text = str(value.desc()).strip()
    return " ".join(text.split()) or type(value).__name__
