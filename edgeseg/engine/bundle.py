"""The last stage of a build bundle: the TensorRT engine for one target, built here or prepared for the device.

A TensorRT engine runs only on the GPU model and TensorRT version that built it, so `finish_for_target` builds
it only when this host is the target (engine.host). Anywhere else it writes a cross-build kit into the bundle:
`target.toml`, `plan.json`, `build_engine.sh` (trtexec) and `README.md`, all with paths relative to the bundle,
so the folder can be copied to the device and finished there with `edgeseg engine build .` (which plans again
for the TensorRT the device really has) or `./build_engine.sh`.

Which ONNX: fp32 -> model.onnx, fp16 -> model.fp16.onnx, int8 -> model.int8.onnx (explicit Q/DQ, which every
supported TensorRT, 8.5 included, builds). INT8 calibration inside TensorRT (IInt8EntropyCalibrator2 on the fp32
graph) is used only when asked for (`legacy_calibrator=True`) or when the chosen ONNX has no Q/DQ.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgeseg import __version__
from edgeseg.engine.host import probe_host, why_host_cannot_build
from edgeseg.engine.onnx_facts import OnnxFacts, read_onnx_facts
from edgeseg.engine.plan import BuildOptions, BuildPlan, DynamicShape, StaticShape, parse_tensorrt_version, plan_build
from edgeseg.engine.sidecar import sidecar_path
from edgeseg.errors import UsageError
from edgeseg.lazy import lazy_import
from edgeseg.manifest import atomic_path, read_json, write_json
from edgeseg.sizes import parse_size
from edgeseg.target_registry import (Target, installed_tensorrt, probe_cuda_device, read_target_toml,
                                     target_from_device)

ONNX_FOR_PRECISION = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
CALIBRATION_MANIFEST = "calibration.json"
PLAN_FILE, TARGET_FILE, SCRIPT_FILE, README_FILE = "plan.json", "target.toml", "build_engine.sh", "README.md"
MODULES_FILE, FAMILY_TARGETS_DIR = "modules.json", "targets"  # family kits only
KIT_FILES = (TARGET_FILE, PLAN_FILE, SCRIPT_FILE, README_FILE)

# finish_for_target options: BuildOptions fields a user may set, and what belongs to the bundle stage itself
_BUILD_KEYS = ("shape", "workspace_mb", "builder_optimization_level", "dla_core", "gpu_fallback", "sparse_weights",
               "timing_cache", "calibration_cache")
_BUNDLE_KEYS = ("legacy_calibrator", "onnx", "data_root", "tensorrt")
_DEFAULT = object()


def engine_name(precision: str) -> str:
    return f"model.{precision}.engine"


@dataclass(frozen=True)
class OnnxChoice:
    name: str  # file name, relative to the bundle
    facts: OnnxFacts

    @property
    def calibrates_in_tensorrt(self) -> bool:
        return not self.facts.has_qdq


def choose_onnx(bundle: Path, precision: str, legacy_calibrator: bool = False, onnx: str | None = None) -> OnnxChoice:
    """The bundle's ONNX for `precision` (or the user's `onnx`, a file in the bundle), with its facts."""
    if precision not in ONNX_FOR_PRECISION:
        raise UsageError(f"a bundle builds {', '.join(ONNX_FOR_PRECISION)} engines, not {precision!r}")
    if onnx is not None:
        name = _relative_option(onnx, "onnx")
    elif precision == "int8" and legacy_calibrator:
        name = ONNX_FOR_PRECISION["fp32"]  # TensorRT calibrates the float graph
    else:
        name = ONNX_FOR_PRECISION[precision]
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


def build_options(precision: str, choice: OnnxChoice, target: Target, settings: dict[str, Any]) -> BuildOptions:
    """BuildOptions for `choice`; the input shape follows the ONNX (a fixed input is the only shape it takes,
    a dynamic one is built for the model's own input size unless `shape` says otherwise)."""
    facts = choice.facts
    shape = settings.get("shape")
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
    timing = settings.get("timing_cache", _DEFAULT)
    if timing is _DEFAULT:  # saved in the bundle, per target: timings are only valid on the GPU that made them
        timing = f"timing.{target.name}.cache"
    calibration_cache = settings.get("calibration_cache")
    return BuildOptions(
        precision=precision, input_name=facts.input_name, shape=shape, channels=channels,
        workspace_mb=settings.get("workspace_mb"),
        builder_optimization_level=settings.get("builder_optimization_level", 3),
        dla_core=settings.get("dla_core"), gpu_fallback=settings.get("gpu_fallback", True),
        sparse_weights=settings.get("sparse_weights", False),
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

def finish_for_target(bundle_dir: str | os.PathLike, target: Target, precision: str, options: dict | None = None,
                      log: Callable[[str], None] = print) -> dict:
    """Build `bundle_dir`'s engine for `target` when this host is that target, else write the cross-build kit.

    options: shape ("HxW", StaticShape or DynamicShape), workspace_mb, builder_optimization_level, dla_core,
    gpu_fallback, sparse_weights, timing_cache / calibration_cache (paths relative to the bundle; timing_cache
    None turns it off), legacy_calibrator, onnx (an ONNX file in the bundle), data_root (calibration images, for
    the legacy calibrator) and tensorrt (the version to plan for when the kit is written, e.g. an older JetPack's).
    """
    bundle = Path(bundle_dir)
    if not bundle.is_dir():
        raise UsageError(f"bundle {bundle} does not exist or is not a folder")
    settings = _check_options(options)
    choice = choose_onnx(bundle, precision, bool(settings.pop("legacy_calibrator", False)), settings.pop("onnx", None))
    data_root = settings.pop("data_root", None)
    asked_tensorrt = settings.pop("tensorrt", None)

    host = probe_host()
    reason = why_host_cannot_build(target, host)
    if reason is None and target.family:  # on the device itself: the module is known, use its plan
        from edgeseg.target_family import resolve_family_here

        target = resolve_family_here(target.family)
        log(f"{target.resolved_from}")
    if reason is None:
        if asked_tensorrt and parse_tensorrt_version(asked_tensorrt)[:2] != parse_tensorrt_version(host.tensorrt)[:2]:
            raise UsageError(f"asked to plan for TensorRT {asked_tensorrt}, but this host builds the engine itself "
                             f"with TensorRT {host.tensorrt}; drop the tensorrt option")
        version = host.tensorrt
    else:
        version = asked_tensorrt or target.default_tensorrt
    plan = plan_build(target, choice.name, build_options(precision, choice, target, settings), version)
    for warning in plan.warnings:
        log(f"warning: {warning}")

    deepstream = _write_deepstream(bundle, choice, precision, log)
    if reason is None:
        sidecar = build_in_bundle(bundle, plan, data_root, log)
        if deepstream.get("config"):
            with atomic_path(bundle / README_FILE) as tmp:
                tmp.write_text("\n".join([f"# edgeseg bundle: {choice.facts.metadata.get('edgeseg.model', 'model')} "
                                          f"for {target.name}", "", *deepstream_readme(choice, precision)]))
        return {"engine": engine_name(precision), "sidecar": sidecar_path(engine_name(precision)).name,
                "plan": plan.to_dict(), "tensorrt": sidecar["tensorrt"], "build_seconds": sidecar["build_seconds"],
                "deepstream": deepstream}

    modules = module_plans(target, choice, precision, settings, version) if target.family else None
    written = write_kit(bundle, target, plan, precision, modules)
    log(f"engine not built here: {reason}; wrote {', '.join(written)} into the bundle: finish on the {target.name} "
        "with 'edgeseg engine build .' (or ./build_engine.sh)")
    if modules:
        log(f"{target.name} is a family: the kit resolves the module on the device ({', '.join(modules)}) and "
            "applies its plan (workspace, DLA cores, power modes)")
    result = {"engine": None, "reason": reason, "plan": plan.to_dict(),
              "trtexec": shlex.join(plan.to_trtexec(engine_name(precision))), "kit": written, "deepstream": deepstream}
    if modules:
        result["family"] = {"name": target.family, "resolved": "on the device", "modules": {
            rule_id: {"target": entry["target"], "workspace_mb": entry["plan"].workspace_mb,
                      "dla_cores": entry["dla_cores"]} for rule_id, entry in modules.items()}}
    return result


def module_plans(target: Target, choice: OnnxChoice, precision: str, settings: dict, version: str) -> dict:
    """Per module of a family: its target (with the rule's overrides) and the plan build_engine.sh applies there."""
    from edgeseg.target_family import module_target
    from edgeseg.target_registry import load_family, load_target

    family = load_family(target.family)
    plans = {}
    for rule in family.modules:
        member = module_target(rule, load_target(rule.target), family, None)
        module_settings = {**settings, "workspace_mb": settings.get("workspace_mb")}  # None: the module's default
        plan = plan_build(member, choice.name, build_options(precision, choice, member, module_settings), version)
        plans[rule.id] = {"target": rule.target, "note": rule.note, "plan": plan, "dla_cores": member.dla_cores,
                          "power_modes": [mode.name for mode in member.power_modes]}
    return plans


def _write_deepstream(bundle: Path, choice: OnnxChoice, precision: str, log: Callable[[str], None]) -> dict:
    """The DeepStream nvinfer config (engine.deepstream); a model DeepStream cannot run is noted, not fatal."""
    from edgeseg.engine.deepstream import write_deepstream
    from edgeseg.zoo.contract import Preprocessing

    preprocessing = Preprocessing.from_dict(choice.facts.preprocessing)
    try:
        written = write_deepstream(bundle, preprocessing, precision, choice.facts.metadata.get("edgeseg.model",
                                                                                              "the model"))
    except UsageError as exc:
        log(f"warning: no DeepStream config: {exc}")
        return {"config": None, "reason": str(exc)}
    log(f"wrote the DeepStream nvinfer config {written['config']} ({written['normalisation']})")
    return written


def deepstream_readme(choice: OnnxChoice, precision: str) -> list[str]:
    from edgeseg.engine.deepstream import readme_section
    from edgeseg.zoo.contract import Preprocessing

    return readme_section(Preprocessing.from_dict(choice.facts.preprocessing), precision)


def _check_options(options: dict | None) -> dict:
    settings = dict(options or {})
    unknown = sorted(set(settings) - set(_BUILD_KEYS) - set(_BUNDLE_KEYS))
    if unknown:
        raise UsageError(f"unknown engine option {unknown[0]!r}; known: {', '.join(_BUILD_KEYS + _BUNDLE_KEYS)}")
    return settings


def _relative_option(value: str | os.PathLike, key: str) -> str:
    """A path inside the bundle, written relative to it so the bundle can move."""
    path = Path(value)
    if path.is_absolute() or ".." in path.parts:
        raise UsageError(f"{key} {value} must be a path inside the bundle, relative to it, so the bundle can move")
    return str(path)


def build_in_bundle(bundle: Path, plan: BuildPlan, data_root: str | os.PathLike | None,
                    log: Callable[[str], None]) -> dict:
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
                                  bundle / plan.calibration_cache if plan.calibration_cache else None, log)
    return build_engine(plan, bundle / plan.onnx_path, bundle / engine_name(plan.requested_precision), feed, log,
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
    from edgeseg.target_registry import load_target

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
                 workspace_mb: int | None = None, data_root: str | os.PathLike | None = None,
                 log: Callable[[str], None] = print) -> dict:
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
        log(f"{target.resolved_from}; its power modes: {', '.join(m.name for m in target.power_modes) or '-'}"
            + (f"; now {mode} (nvpmodel -q)" if mode else ""))
    if dla_core is not None:
        options = dataclasses.replace(options, dla_core=dla_core, gpu_fallback=True)
    if workspace_mb is not None:
        options = dataclasses.replace(options, workspace_mb=workspace_mb)
    plan = plan_build(target, choice.name, options, host.tensorrt)
    if parse_tensorrt_version(plan.tensorrt_version) != parse_tensorrt_version(planned.tensorrt_version):
        log(f"the kit was planned for TensorRT {planned.tensorrt_version}; this device has {plan.tensorrt_version}, "
            "so the plan was made again for it")
    for field, before, after in plan_changes(planned, plan):
        log(f"plan change: {field}: {before} -> {after}")
    for warning in plan.warnings:
        log(f"warning: {warning}")
    sidecar = build_in_bundle(bundle, plan, data_root, log)
    return {"engine": engine_name(precision), "sidecar": sidecar_path(engine_name(precision)).name,
            "plan": plan.to_dict(), "tensorrt": sidecar["tensorrt"], "build_seconds": sidecar["build_seconds"]}


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


def record_kit_engine(engine_path: str | os.PathLike, log: Callable[[str], None] = print) -> dict:
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
    return record_trtexec_engine(plan, bundle / plan.onnx_path, engine_path, log,
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
        from edgeseg.target_registry import load_target

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


def render_family_script(target: Target, plan: BuildPlan, precision: str, modules: dict) -> str:
    """build_engine.sh of a family kit: resolve the module (same rules as edgeseg), then run its trtexec line."""
    single = render_script(target, plan, precision).splitlines()
    command = shlex.join(plan.to_trtexec(engine_name(precision)))
    at = single.index(command)
    lines = single[:at]
    lines[1] = (f"# Build the TensorRT engine of this edgeseg bundle ON THE DEVICE: any {target.name} module; the "
                "module is resolved here (device tree, memory; EDGESEG_MODULE=<id> overrides) and its plan applied.")
    lines += render_resolver(target.family)
    lines += ['module="$(edgeseg_module)"', 'echo "build_engine.sh: module $module"', 'case "$module" in']
    for rule_id, entry in modules.items():
        lines.append(f"    {rule_id}) {shlex.join(entry['plan'].to_trtexec(engine_name(precision)))} ;;")
    lines += ['    *) echo "build_engine.sh: no plan for module $module" >&2; exit 1 ;;', "esac"]
    return "\n".join(lines + single[at + 1:]) + "\n"


def render_resolver(family_name: str) -> list[str]:
    from edgeseg.target_family import render_resolver_shell
    from edgeseg.target_registry import load_family

    return render_resolver_shell(load_family(family_name))


def render_script(target: Target, plan: BuildPlan, precision: str) -> str:
    engine = engine_name(precision)
    lines = [
        "#!/usr/bin/env bash",
        f"# Build the TensorRT engine of this edgeseg bundle ON THE DEVICE: {target.name}, {plan.engine_precision}, "
        f"planned for TensorRT {plan.tensorrt_version}.",
        "# Every path is relative to this folder, so the bundle can be copied or moved anywhere.",
        "# The Python alternative, which also plans again for the installed TensorRT and writes the sidecar",
        "# edgeseg's runner needs:  edgeseg engine build .",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'export PATH="$PATH:/usr/src/tensorrt/bin"  # where JetPack puts trtexec',
    ]
    if plan.calibration_cache:
        cache = shlex.quote(plan.calibration_cache)
        lines += [
            f"if [ ! -s {cache} ]; then",
            f'    echo "build_engine.sh: {plan.calibration_cache} is missing and trtexec cannot calibrate INT8;'
            " run 'edgeseg engine build .', which calibrates and writes it\" >&2",
            "    exit 1",
            "fi",
        ]
    lines += [
        "if ! command -v trtexec >/dev/null 2>&1; then",
        '    echo "build_engine.sh: trtexec not found; install TensorRT (JetPack on a Jetson)" >&2',
        "    exit 127",
        "fi",
        shlex.join(plan.to_trtexec(engine)),
        "# trtexec writes no sidecar; edgeseg's runner refuses an engine without one (it records the GPU and",
        "# TensorRT that built it and the model's preprocessing).",
        "if command -v edgeseg >/dev/null 2>&1; then",
        f"    edgeseg engine sidecar {shlex.quote(engine)} || "
        f'echo "build_engine.sh: built {engine} but could not write its sidecar" >&2',
        "else",
        f'    echo "built {engine}; to run it with edgeseg: edgeseg engine sidecar {engine}"',
        "fi",
    ]
    return "\n".join(lines) + "\n"


def family_readme(target: Target, modules: dict) -> list[str]:
    lines = [
        f"## {target.name} is a family: the module is resolved on the device",
        "",
        "This kit does not assume one module. On the device, `edgeseg engine build .` and `./build_engine.sh` read "
        "`/proc/device-tree/model`, the module part number in `/proc/device-tree/compatible` and the memory size, "
        "pick the first matching module below and build with its plan (set `EDGESEG_MODULE=<module>` on a carrier "
        "board whose model string is its own). The plan above is what every module shares; DLA cores are chosen "
        "on the device (`edgeseg engine build . --dla-core N`), and a module without a DLA refuses them.",
        "",
        "| module | target | workspace MiB | DLA cores | power modes | note |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for rule_id, entry in modules.items():
        lines.append(f"| `{rule_id}` | {entry['target']} | {entry['plan'].workspace_mb} | {entry['dla_cores']} | "
                     f"{' '.join(entry['power_modes'])} | {entry['note']} |")
    return lines + [""]


_FILE_NOTES = {
    "model.onnx": "the model in fp32 (ONNX), with the preprocessing contract in its metadata",
    "model.fp16.onnx": "the model in fp16 (ONNX)",
    "model.int8.onnx": "the model with INT8 Q/DQ (ONNX), calibrated on the calibration set",
    CALIBRATION_MANIFEST: "the calibration set: image paths relative to the data root, with sha256",
    "manifest.json": "the build's manifest: inputs, settings, versions",
    "report.json": "the build report (accuracy, sizes, checks)",
    "report.md": "the build report, readable",
    TARGET_FILE: "the target this kit was prepared for",
    PLAN_FILE: "the TensorRT build plan (BuildPlan.to_dict), paths relative to this folder",
    SCRIPT_FILE: "builds the engine with trtexec",
    README_FILE: "this file",
    MODULES_FILE: "family kits: each module's target and TensorRT plan (build_engine.sh applies the device's)",
    "nvinfer_config.txt": "DeepStream nvinfer config (semantic segmentation), paths relative to this folder",
    "labels.txt": "class names, one a line (DeepStream labelfile-path)",
}


def _file_note(name: str) -> str:
    if name in _FILE_NOTES:
        return _FILE_NOTES[name]
    if name.endswith(".deepstream.onnx"):
        return "the model with a Softmax appended, for DeepStream's nvinfer"
    if name.endswith(".onnx.json"):
        return "the manifest of " + name.removesuffix(".json")
    if name.endswith(".engine.json"):
        return "the engine's sidecar: the GPU and TensorRT that built it, preprocessing, layer precisions"
    if name.endswith(".engine"):
        return "a TensorRT engine; it runs only on the GPU and TensorRT its sidecar names"
    if name.endswith(".cache"):
        return "a TensorRT cache (tactic timings or INT8 calibration), reused by the next build"
    return ""


def render_readme(bundle: Path, target: Target, plan: BuildPlan, precision: str, modules: dict | None = None) -> str:
    engine = engine_name(precision)
    facts = read_onnx_facts(bundle / plan.onnx_path)
    model = facts.metadata.get("edgeseg.model", "the model")
    jetpack = [release.version for release in target.jetpack
               if parse_tensorrt_version(release.tensorrt)[:2] == parse_tensorrt_version(plan.tensorrt_version)[:2]]
    expected = f"TensorRT {plan.tensorrt_version}" + (f" (JetPack {' or '.join(jetpack)})" if jetpack else "")
    shape = "x".join(map(str, plan.opt_shape)) if not plan.dynamic else (
        f"{'x'.join(map(str, plan.min_shape))} to {'x'.join(map(str, plan.max_shape))}")
    how = ("INT8 calibrated inside TensorRT from the calibration set" if plan.calibrator
           else "INT8 from the Q/DQ scales in the graph" if plan.onnx_has_qdq else f"{plan.engine_precision}")
    lines = [
        f"# edgeseg bundle: {model} for {target.name}",
        "",
        "This folder is an edgeseg build bundle: the model as ONNX (fp32, fp16, INT8 Q/DQ), manifests, the build "
        "report, and a kit to build the TensorRT engine on the device itself. A TensorRT engine runs only on the "
        "GPU model and TensorRT version that built it, and the machine that prepared this bundle is not a "
        f"{target.name}, so the engine is built there. Every path here is relative: copy or move the folder freely.",
        "",
        "## Target",
        "",
        f"- {target.name}: {target.description}",
        f"- compute capability {target.compute_capability}; expected: {expected}",
        f"- engine: {plan.engine_precision} ({how}), from {plan.onnx_path}, input {plan.input_name} {shape}, "
        f"workspace {plan.workspace_mb} MiB"
        + (f", DLA core {plan.dla_core}" + (" with GPU fallback" if "GPU_FALLBACK" in plan.builder_flags else "")
           if plan.dla_core is not None else ""),
        "",
        *(family_readme(target, modules) if modules else []),
        "## Finish the build on the device",
        "",
        f"Copy this folder to the {target.name}, then, inside it:",
        "",
        "    pip install 'edgeseg[trt]'   # on a Jetson, JetPack provides TensorRT itself",
        "    edgeseg engine build .",
        "",
        f"This writes `{engine}` and its sidecar `{sidecar_path(engine).name}` (GPU, TensorRT, preprocessing, layer "
        "precisions), which `edgeseg` checks before it runs the engine. If the device has another TensorRT than "
        f"{plan.tensorrt_version}, the plan is made again for it and the changes are printed. "
        "Options: `--precision`, `--dla-core N`, `--workspace-mb N`"
        + (", `--data-root DIR` (calibration images)" if plan.calibrator else "") + ".",
        "",
        "Without edgeseg, with TensorRT's trtexec:",
        "",
        "    ./build_engine.sh",
        "",
        "which runs",
        "",
        f"    {shlex.join(plan.to_trtexec(engine))}",
        "",
        f"and then, to run the engine with edgeseg, records its sidecar: `edgeseg engine sidecar {engine}`.",
        "",
    ]
    if plan.calibrator:
        lines += [
            "INT8 is calibrated inside TensorRT here: the images listed in `calibration.json` must be on the device "
            "under the data root (`--data-root DIR` or `EDGESEG_DATA`). trtexec cannot calibrate; it only reads "
            f"`{plan.calibration_cache}`, which `edgeseg engine build .` writes.",
            "",
        ]
    if plan.warnings:
        lines += ["## Warnings from the plan", ""] + [f"- {warning}" for warning in plan.warnings] + [""]
    if (bundle / "nvinfer_config.txt").is_file():
        from edgeseg.engine.deepstream import readme_section
        from edgeseg.zoo.contract import Preprocessing

        lines += readme_section(Preprocessing.from_dict(facts.preprocessing), precision)
    present = sorted(path.name for path in bundle.iterdir() if path.is_file() and not path.name.startswith("."))
    # manifest.json and the reports are written by 'edgeseg build' after this stage, so they are listed anyway
    names = sorted(set(present) | set(KIT_FILES) | {"manifest.json", "report.json", "report.md"})
    lines += ["## Files", "", "| file | what |", "| --- | --- |"]
    for name in names:
        lines.append(f"| `{name}` | {_file_note(name)} |")
    lines += ["", f"Prepared by edgeseg {__version__}.", ""]
    return "\n".join(lines)
