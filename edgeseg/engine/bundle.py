"""The last stage of a build bundle: the TensorRT engine for one target, built here or prepared for the device.

A TensorRT engine runs only on the GPU model and TensorRT version that built it, so `finish_for_target` builds
it only when this host is the target (engine.host). Anywhere else it writes a cross-build kit into the bundle:
`target.toml`, `plan.json`, `build_engine.sh` (trtexec) and `README.md`, all with paths relative to the bundle,
so the folder can be copied to the device and finished there with `edgeseg engine build .` (which plans again
for the TensorRT the device really has) or `./build_engine.sh`.

Which ONNX: fp32 -> model.onnx, fp16 -> model.fp16.onnx, int8 -> model.int8.onnx (explicit Q/DQ, which every
supported TensorRT, 8.5 included, builds). INT8 calibration inside TensorRT (IInt8EntropyCalibrator2 on the fp32
graph) is used only when asked for (`legacy_calibrator=True`) or when the chosen ONNX has no Q/DQ.

The bundle's and the kit's file names are in edgeseg.bundle_layout, the kit's text (script, README) in
engine.kit_templates; options come in as EngineOptions, results go out as EngineBuilt or KitWritten
(`to_dict()` is what report.json records).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseg.bundle_layout import (CALIBRATION_MANIFEST, FAMILY_TARGETS_DIR, KIT_FILES, MODULES_FILE,  # noqa: F401
                                   ONNX_FILES, PLAN_FILE, README_FILE, SCRIPT_FILE, TARGET_FILE,
                                   TIMING_CACHE_PER_TARGET, engine_name, sidecar_name)
from edgeseg.engine.host import installed_tensorrt, probe_cuda_device, probe_host, why_host_cannot_build
from edgeseg.engine.kit_templates import render_built_readme, render_family_script, render_readme, render_script
from edgeseg.engine.onnx_facts import OnnxFacts, read_onnx_facts
from edgeseg.engine.plan import BuildOptions, BuildPlan, DynamicShape, StaticShape, parse_tensorrt_version, plan_build
from edgeseg.errors import UsageError
from edgeseg.lazy import lazy_import
from edgeseg.manifest import atomic_path, read_json, write_json
from edgeseg.sizes import parse_size
from edgeseg.target.loading import read_target_toml
from edgeseg.target.schema import Target, target_from_device

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineOptions:
    """What a user may set for finish_for_target: BuildOptions fields, then what belongs to the bundle stage.

    shape: "HxW", StaticShape or DynamicShape (default: the ONNX's own input); timing_cache / calibration_cache:
    paths relative to the bundle (timing_cache None turns it off); onnx: an ONNX file in the bundle instead of the
    precision's; data_root: calibration images, for the legacy calibrator; tensorrt: the version to plan for when
    the kit is written (e.g. an older JetPack's).
    """

    shape: str | StaticShape | DynamicShape | None = None
    workspace_mb: int | None = None
    builder_optimization_level: int = 3
    dla_core: int | None = None
    gpu_fallback: bool = True
    sparse_weights: bool = False
    timing_cache: str | None = TIMING_CACHE_PER_TARGET
    calibration_cache: str | None = None
    legacy_calibrator: bool = False
    onnx: str | None = None
    data_root: str | os.PathLike | None = None
    tensorrt: str | None = None

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None) -> EngineOptions:
        """Options given by name (a settings file, an older caller); an unknown name is a usage error."""
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(options or {}) - set(known))
        if unknown:
            raise UsageError(f"unknown engine option {unknown[0]!r}; known: {', '.join(known)}")
        return cls(**(options or {}))


@dataclass(frozen=True)
class EngineBuilt:
    """The engine was built here (this host is the target): file names in the bundle, and how it was planned."""

    engine: str
    sidecar: str
    plan: BuildPlan
    tensorrt: str
    build_seconds: float
    deepstream: dict | None = None  # finish_for_target's DeepStream config result; build_bundle writes none

    @property
    def reason(self) -> None:  # why no engine was built: it was
        return None

    def to_dict(self) -> dict[str, Any]:
        out = {"engine": self.engine, "sidecar": self.sidecar, "plan": self.plan.to_dict(), "tensorrt": self.tensorrt,
               "build_seconds": self.build_seconds}
        if self.deepstream is not None:
            out["deepstream"] = self.deepstream
        return out


@dataclass(frozen=True)
class KitWritten:
    """No engine here (this host is not the target): the cross-build kit written into the bundle instead."""

    reason: str
    plan: BuildPlan
    trtexec: str  # the command line build_engine.sh runs
    kit: list[str]  # files written
    deepstream: dict
    family: dict | None = None  # a family kit: its modules and their plans' main settings

    @property
    def engine(self) -> None:
        return None

    def to_dict(self) -> dict[str, Any]:
        out = {"engine": None, "reason": self.reason, "plan": self.plan.to_dict(), "trtexec": self.trtexec,
               "kit": self.kit, "deepstream": self.deepstream}
        if self.family is not None:
            out["family"] = self.family
        return out


@dataclass(frozen=True)
class OnnxChoice:
    name: str  # file name, relative to the bundle
    facts: OnnxFacts

    @property
    def calibrates_in_tensorrt(self) -> bool:
        return not self.facts.has_qdq


def choose_onnx(bundle: Path, precision: str, legacy_calibrator: bool = False, onnx: str | None = None) -> OnnxChoice:
    """The bundle's ONNX for `precision` (or the user's `onnx`, a file in the bundle), with its facts."""
    if precision not in ONNX_FILES:
        raise UsageError(f"a bundle builds {', '.join(ONNX_FILES)} engines, not {precision!r}")
    if onnx is not None:
        name = _relative_option(onnx, "onnx")
    elif precision == "int8" and legacy_calibrator:
        name = ONNX_FILES["fp32"]  # TensorRT calibrates the float graph
    else:
        name = ONNX_FILES[precision]
    path = bundle / name
    if not path.is_file():
        if onnx is None and precision == "int8" and not legacy_calibrator:
            raise UsageError(f"{bundle} has no {name}; run 'edgeseg quantize' for the INT8 Q/DQ model, or pass "
                             "legacy_calibrator=True to calibrate the fp32 model inside TensorRT (8.x and 10 only)")
        raise UsageError(f"{bundle} has no {name}; is it an edgeseg build bundle?")
    facts = read_onnx_facts(path)
    if facts.preprocessing is None:
        raise UsageError(f"{name} carries no edgeseg preprocessing metadata; export it with 'edgeseg export'")
    if facts.declared_precision == "int8" and not facts.has_qdq:
        raise UsageError(f"{name} says it is int8 but has no QuantizeLinear/DequantizeLinear nodes; "
                         "run 'edgeseg quantize' again")
    if legacy_calibrator and facts.has_qdq:
        raise UsageError(f"legacy_calibrator asks TensorRT to calibrate, but {name} already carries Q/DQ scales; "
                         "drop legacy_calibrator or choose the fp32 model.onnx")
    if precision == "int8" and not facts.has_qdq and not legacy_calibrator and onnx is None:
        # model.int8.onnx without Q/DQ and without edgeseg's precision mark: not what 'edgeseg quantize' writes
        raise UsageError(f"{name} has no Q/DQ nodes; run 'edgeseg quantize' again, or pass legacy_calibrator=True")
    return OnnxChoice(name, facts)


def build_options(precision: str, choice: OnnxChoice, target: Target, options: EngineOptions) -> BuildOptions:
    """BuildOptions for `choice`; the input shape follows the ONNX (a fixed input is the only shape it takes,
    a dynamic one is built for the model's own input size unless `shape` says otherwise)."""
    facts = choice.facts
    shape = options.shape
    if isinstance(shape, str):
        shape = StaticShape(*parse_size(shape))
    channels = facts.input_shape[1] if len(facts.input_shape) == 4 and isinstance(facts.input_shape[1], int) else 3
    if facts.static_input and len(facts.input_shape) == 4:
        batch, _, height, width = facts.input_shape
        fixed = StaticShape(height, width, batch)
        if shape is not None and shape != fixed:
            raise UsageError(f"{choice.name} has a fixed input {'x'.join(map(str, facts.input_shape))}; drop the "
                             "shape option or export with dynamic axes")
        shape = fixed
    elif shape is None and facts.preprocessing:
        shape = StaticShape(*facts.preprocessing["input_size"])
    timing = options.timing_cache
    if timing == TIMING_CACHE_PER_TARGET:
        timing = timing.format(target=target.name)
    calibration_cache = options.calibration_cache
    return BuildOptions(
        precision=precision, input_name=facts.input_name, shape=shape, channels=channels,
        workspace_mb=options.workspace_mb, builder_optimization_level=options.builder_optimization_level,
        dla_core=options.dla_core, gpu_fallback=options.gpu_fallback, sparse_weights=options.sparse_weights,
        timing_cache=Path(_relative_option(timing, "timing_cache")) if timing else None,
        calibration_cache=Path(_relative_option(calibration_cache, "calibration_cache")) if calibration_cache else None,
        onnx_has_qdq=facts.has_qdq, onnx_precision=facts.onnx_precision,
    )


def options_from_plan(plan: BuildPlan) -> BuildOptions:
    """The BuildOptions that give `plan` again (to plan anew for another TensorRT, precision or DLA core)."""
    if plan.dynamic:
        shape: StaticShape | DynamicShape = DynamicShape(plan.min_shape, plan.opt_shape, plan.max_shape)
    else:
        batch, _, height, width = plan.opt_shape
        shape = StaticShape(height, width, batch)
    return BuildOptions(
        precision=plan.requested_precision, input_name=plan.input_name, shape=shape, channels=plan.opt_shape[1],
        workspace_mb=plan.workspace_mb,
        builder_optimization_level=3 if plan.builder_optimization_level is None else plan.builder_optimization_level,
        dla_core=plan.dla_core,
        gpu_fallback="GPU_FALLBACK" in plan.builder_flags if plan.dla_core is not None else True,
        sparse_weights="SPARSE_WEIGHTS" in plan.builder_flags,
        timing_cache=Path(plan.timing_cache) if plan.timing_cache else None,
        calibration_cache=Path(plan.calibration_cache) if plan.calibration_cache else None,
        onnx_has_qdq=plan.onnx_has_qdq, onnx_precision=plan.onnx_precision,
    )


# ---------------------------------------------------------------------------------------------------------------
# Host side: build here, or write the kit

def finish_for_target(bundle_dir: str | os.PathLike, target: Target, precision: str,
                      options: EngineOptions | dict | None = None) -> EngineBuilt | KitWritten:
    """Build `bundle_dir`'s engine for `target` when this host is that target, else write the cross-build kit.

    options: EngineOptions (a dict is read with EngineOptions.from_dict, so an unknown name is refused).
    """
    bundle = Path(bundle_dir)
    if not bundle.is_dir():
        raise UsageError(f"bundle {bundle} does not exist or is not a folder")
    if not isinstance(options, EngineOptions):
        options = EngineOptions.from_dict(options)
    choice = choose_onnx(bundle, precision, options.legacy_calibrator, options.onnx)
    asked_tensorrt = options.tensorrt

    host = probe_host()
    reason = why_host_cannot_build(target, host)
    if reason is None and target.family:  # on the device itself: the module is known, use its plan
        from edgeseg.target_family import resolve_family_here

        target = resolve_family_here(target.family)
        _log.info(f"{target.resolved_from}")
    if reason is None:
        if asked_tensorrt and parse_tensorrt_version(asked_tensorrt)[:2] != parse_tensorrt_version(host.tensorrt)[:2]:
            raise UsageError(f"asked to plan for TensorRT {asked_tensorrt}, but this host builds the engine itself "
                             f"with TensorRT {host.tensorrt}; drop the tensorrt option")
        version = host.tensorrt
    else:
        version = asked_tensorrt or target.default_tensorrt
    plan = plan_build(target, choice.name, build_options(precision, choice, target, options), version)
    for warning in plan.warnings:
        _log.info(f"warning: {warning}")

    deepstream = _write_deepstream(bundle, choice, precision)
    if reason is None:
        sidecar = build_in_bundle(bundle, plan, options.data_root)
        if deepstream.get("config"):
            with atomic_path(bundle / README_FILE) as tmp:
                tmp.write_text(render_built_readme(choice.facts.metadata.get("edgeseg.model", "model"), target,
                                                   choice.facts.preprocessing, precision))
        return EngineBuilt(engine_name(precision), sidecar_name(engine_name(precision)), plan,
                           sidecar["tensorrt"], sidecar["build_seconds"], deepstream)

    modules = module_plans(target, choice, precision, options, version) if target.family else None
    written = write_kit(bundle, target, plan, precision, modules)
    _log.info(f"engine not built here: {reason}; wrote {', '.join(written)} into the bundle: finish on the "
              f"{target.name} with 'edgeseg engine build .' (or ./build_engine.sh)")
    if modules:
        _log.info(f"{target.name} is a family: the kit resolves the module on the device ({', '.join(modules)}) and "
                  "applies its plan (workspace, DLA cores, power modes)")
    family = None
    if modules:
        family = {"name": target.family, "resolved": "on the device", "modules": {
            rule_id: {"target": entry["target"], "workspace_mb": entry["plan"].workspace_mb,
                      "dla_cores": entry["dla_cores"]} for rule_id, entry in modules.items()}}
    return KitWritten(reason, plan, shlex.join(plan.to_trtexec(engine_name(precision))), written, deepstream, family)


def module_plans(target: Target, choice: OnnxChoice, precision: str, options: EngineOptions, version: str) -> dict:
    """Per module of a family: its target (with the rule's overrides) and the plan build_engine.sh applies there."""
    from edgeseg.target_family import module_target
    from edgeseg.target.loading import load_family, load_target

    family = load_family(target.family)
    plans = {}
    for rule in family.modules:
        member = module_target(rule, load_target(rule.target), family, None)
        plan = plan_build(member, choice.name, build_options(precision, choice, member, options), version)
        plans[rule.id] = {"target": rule.target, "note": rule.note, "plan": plan, "dla_cores": member.dla_cores,
                          "power_modes": [mode.name for mode in member.power_modes]}
    return plans


def _write_deepstream(bundle: Path, choice: OnnxChoice, precision: str) -> dict:
    """The DeepStream nvinfer config (engine.deepstream); a model DeepStream cannot run is noted, not fatal."""
    from edgeseg.engine.deepstream import write_deepstream
    from edgeseg.zoo.contract import Preprocessing

    preprocessing = Preprocessing.from_dict(choice.facts.preprocessing)
    try:
        written = write_deepstream(bundle, preprocessing, precision, choice.facts.metadata.get("edgeseg.model",
                                                                                              "the model"))
    except UsageError as exc:
        _log.info(f"warning: no DeepStream config: {exc}")
        return {"config": None, "reason": str(exc)}
    _log.info(f"wrote the DeepStream nvinfer config {written['config']} ({written['normalisation']})")
    return written


def _relative_option(value: str | os.PathLike, key: str) -> str:
    """A path inside the bundle, written relative to it so the bundle can move."""
    path = Path(value)
    if path.is_absolute() or ".." in path.parts:
        raise UsageError(f"{key} {value} must be a path inside the bundle, relative to it, so the bundle can move")
    return str(path)


def build_in_bundle(bundle: Path, plan: BuildPlan, data_root: str | os.PathLike | None) -> dict:
    """Build the plan's engine into the bundle (this host is the target); returns the sidecar."""
    from edgeseg.engine.build import build_engine

    manifest = bundle / CALIBRATION_MANIFEST
    feed = None
    if plan.calibrator:
        from edgeseg.engine.calibrator import feed_from_manifest
        from edgeseg.zoo.contract import Preprocessing

        if not manifest.is_file():
            raise UsageError(f"INT8 calibration in TensorRT needs {CALIBRATION_MANIFEST} in {bundle}; "
                             "make one with 'edgeseg calib'")
        preprocessing = Preprocessing.from_dict(read_onnx_facts(bundle / plan.onnx_path).preprocessing)
        feed = feed_from_manifest(manifest, data_root, preprocessing, plan.opt_shape,
                                  bundle / plan.calibration_cache if plan.calibration_cache else None)
    return build_engine(plan, bundle / plan.onnx_path, bundle / engine_name(plan.requested_precision), feed,
                        calibration_manifest=manifest if manifest.is_file() else None, base_dir=bundle)


# ---------------------------------------------------------------------------------------------------------------
# Device side: `edgeseg engine build BUNDLE`

def load_kit_target(bundle: Path, plan: BuildPlan) -> Target:
    """The target from the kit's target.toml (its name need not match the file name, unlike load_target)."""
    from edgeseg.target_family import is_family, read_toml

    if (bundle / TARGET_FILE).is_file() and is_family(read_toml(bundle / TARGET_FILE)):
        return resolve_kit_family(bundle)
    target = read_target_toml(bundle / TARGET_FILE,
                              f"{bundle} has no {TARGET_FILE}; prepare the bundle for a target first", TARGET_FILE)
    if target.from_device:  # 'cuda': whatever GPU this machine has
        return target_from_device(target, probe_cuda_device(), installed_tensorrt())
    return dataclasses.replace(target, resolved_from=plan.resolved_from)


def resolve_kit_family(bundle: Path) -> Target:
    """A family kit on the device: which module this is (device tree, memory; EDGESEG_MODULE overrides), and that
    module's target from the kit's targets/ folder (the built-in one if the kit lacks it)."""
    from edgeseg.target_family import (MODULE_ENV, module_target, parse_family, read_device_facts, read_toml,
                                       resolve_module)
    from edgeseg.target.loading import load_target

    family = parse_family(read_toml(bundle / TARGET_FILE), TARGET_FILE)
    forced = os.environ.get(MODULE_ENV)
    facts = None if forced else read_device_facts()
    rule = resolve_module(family, facts, forced)
    copied = bundle / FAMILY_TARGETS_DIR / f"{rule.target}.toml"
    base = read_target_toml(copied, "", str(copied)) if copied.is_file() else load_target(rule.target)
    return module_target(rule, base, family, facts)


def read_kit_plan(bundle: Path) -> BuildPlan:
    path = bundle / PLAN_FILE
    if not path.is_file():
        raise UsageError(f"{bundle} has no {PLAN_FILE}: it has not been prepared for a target yet "
                         "(finish the bundle for a target first, e.g. 'edgeseg build --target NAME')")
    try:
        return BuildPlan.from_dict(read_json(path))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{path} is not an edgeseg build plan ({exc}); prepare the bundle again") from None


def build_bundle(bundle_dir: str | os.PathLike, precision: str | None = None, dla_core: int | None = None,
                 workspace_mb: int | None = None, data_root: str | os.PathLike | None = None) -> EngineBuilt:
    """On the device: plan the kit again for the installed TensorRT (and any changed option), then build."""
    bundle = Path(bundle_dir)
    if not bundle.is_dir():
        raise UsageError(f"bundle {bundle} does not exist or is not a folder")
    planned = read_kit_plan(bundle)
    lazy_import("tensorrt")  # the first thing a build needs: say so before anything else
    target = load_kit_target(bundle, planned)
    host = probe_host()
    reason = why_host_cannot_build(target, host)
    if reason is not None:
        raise UsageError(f"cannot build the {target.name} engine here: {reason}")

    precision = precision or planned.requested_precision
    if precision == planned.requested_precision:
        choice = choose_onnx(bundle, precision, onnx=planned.onnx_path)
    else:
        choice = choose_onnx(bundle, precision, legacy_calibrator=bool(planned.calibrator) and precision == "int8")
    options = dataclasses.replace(options_from_plan(planned), precision=precision, input_name=choice.facts.input_name,
                                  onnx_has_qdq=choice.facts.has_qdq, onnx_precision=choice.facts.onnx_precision)
    if target.name != planned.target:  # a family kit resolved to its module: the module's workspace applies
        options = dataclasses.replace(options, workspace_mb=None)
        mode = current_power_mode()
        _log.info(f"{target.resolved_from}; its power modes: {', '.join(m.name for m in target.power_modes) or '-'}"
                  + (f"; now {mode} (nvpmodel -q)" if mode else ""))
    if dla_core is not None:
        options = dataclasses.replace(options, dla_core=dla_core, gpu_fallback=True)
    if workspace_mb is not None:
        options = dataclasses.replace(options, workspace_mb=workspace_mb)
    plan = plan_build(target, choice.name, options, host.tensorrt)
    if parse_tensorrt_version(plan.tensorrt_version) != parse_tensorrt_version(planned.tensorrt_version):
        _log.info(f"the kit was planned for TensorRT {planned.tensorrt_version}; this device has "
                  f"{plan.tensorrt_version}, so the plan was made again for it")
    for field, before, after in plan_changes(planned, plan):
        _log.info(f"plan change: {field}: {before} -> {after}")
    for warning in plan.warnings:
        _log.info(f"warning: {warning}")
    sidecar = build_in_bundle(bundle, plan, data_root)
    return EngineBuilt(engine_name(precision), sidecar_name(engine_name(precision)), plan, sidecar["tensorrt"],
                       sidecar["build_seconds"])


def current_power_mode() -> str | None:
    """The nvpmodel mode name on a Jetson (nvpmodel -q), None elsewhere."""
    import shutil
    import subprocess

    from edgeseg.bench.env import parse_nvpmodel_query

    if shutil.which("nvpmodel") is None:
        return None
    try:
        done = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    parsed = parse_nvpmodel_query(done.stdout) if done.returncode == 0 else None
    return parsed["name"] if parsed else None


def record_kit_engine(engine_path: str | os.PathLike) -> dict:
    """`edgeseg engine sidecar ENGINE`: the sidecar of an engine build_engine.sh (trtexec) built in a kit."""
    from edgeseg.engine.build import record_trtexec_engine

    engine_path = Path(engine_path)
    bundle = engine_path.parent
    plan = read_kit_plan(bundle)
    if (bundle / MODULES_FILE).is_file():  # a family kit: build_engine.sh ran this module's plan
        module = load_kit_target(bundle, plan)
        rule_id = module.resolved_from.rsplit(" as ", 1)[-1]
        plan = BuildPlan.from_dict(read_json(bundle / MODULES_FILE)[rule_id]["plan"])
    manifest = bundle / CALIBRATION_MANIFEST
    return record_trtexec_engine(plan, bundle / plan.onnx_path, engine_path,
                                 calibration_manifest=manifest if manifest.is_file() else None, base_dir=bundle)


def plan_changes(before: BuildPlan, after: BuildPlan) -> list[tuple[str, Any, Any]]:
    """Fields whose value differs between two plans (besides the TensorRT version and the warnings)."""
    skipped = {"tensorrt_version", "warnings"}
    old, new = before.to_dict(), after.to_dict()
    return [(key, old[key], new[key]) for key in old if key not in skipped and old[key] != new[key]]


# ---------------------------------------------------------------------------------------------------------------
# The kit

def write_kit(bundle: Path, target: Target, plan: BuildPlan, precision: str, modules: dict | None = None) -> list[str]:
    """Write target.toml, plan.json, build_engine.sh and README.md into the bundle; returns their names. For a
    family, also targets/<member>.toml and modules.json (each module's plan), and a script that resolves the
    module before it builds."""
    for value in (plan.onnx_path, plan.timing_cache, plan.calibration_cache):
        if value and Path(value).is_absolute():  # a moved bundle would point back at this machine
            raise UsageError(f"the plan names {value}, an absolute path; bundle paths must be relative")
    if not target.source or not Path(target.source).is_file():
        raise UsageError(f"target {target.name} has no target file to copy into the bundle")
    with atomic_path(bundle / TARGET_FILE) as tmp:
        tmp.write_text(Path(target.source).read_text())
    write_json(bundle / PLAN_FILE, plan.to_dict())
    written = list(KIT_FILES)
    if modules:
        from edgeseg.target.loading import load_target

        (bundle / FAMILY_TARGETS_DIR).mkdir(exist_ok=True)
        for name in dict.fromkeys(entry["target"] for entry in modules.values()):
            with atomic_path(bundle / FAMILY_TARGETS_DIR / f"{name}.toml") as tmp:
                tmp.write_text(Path(load_target(name).source).read_text())
        write_json(bundle / MODULES_FILE, {rule_id: {**entry, "plan": entry["plan"].to_dict()}
                                           for rule_id, entry in modules.items()})
        written += [MODULES_FILE, FAMILY_TARGETS_DIR + "/"]
    with atomic_path(bundle / SCRIPT_FILE) as tmp:
        tmp.write_text(render_family_script(target, plan, precision, modules) if modules
                       else render_script(target, plan, precision))
        os.chmod(tmp, 0o755)
    with atomic_path(bundle / README_FILE) as tmp:
        tmp.write_text(render_readme(bundle, target, plan, precision, modules))
    return written
