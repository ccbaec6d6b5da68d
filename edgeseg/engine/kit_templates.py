"""The text of a bundle's cross-build kit: build_engine.sh (trtexec, and the module resolver of a family kit) and
README.md (target, how to finish on the device, the DeepStream section, what each file is).

Pure rendering: the plan and target come in, text goes out; engine.bundle decides what is written where.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from edgeseg import __version__
from edgeseg.bundle_layout import (BUILD_FILES, CALIBRATION_MANIFEST, KIT_FILES, LABELS_FILE, MANIFEST_FILE,
                                   MODULES_FILE, NVINFER_CONFIG, ONNX_FILES, PLAN_FILE, README_FILE, REPORT_JSON,
                                   REPORT_MD, SCRIPT_FILE, TARGET_FILE, engine_name, sidecar_name)
from edgeseg.engine.onnx_facts import read_onnx_facts
from edgeseg.engine.plan import BuildPlan, parse_tensorrt_version
from edgeseg.target.schema import Target


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
    from edgeseg.target.loading import load_family

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
    ONNX_FILES["fp32"]: "the model in fp32 (ONNX), with the preprocessing contract in its metadata",
    ONNX_FILES["fp16"]: "the model in fp16 (ONNX)",
    ONNX_FILES["int8"]: "the model with INT8 Q/DQ (ONNX), calibrated on the calibration set",
    CALIBRATION_MANIFEST: "the calibration set: image paths relative to the data root, with sha256",
    MANIFEST_FILE: "the build's manifest: inputs, settings, versions",
    REPORT_JSON: "the build report (accuracy, sizes, checks)",
    REPORT_MD: "the build report, readable",
    TARGET_FILE: "the target this kit was prepared for",
    PLAN_FILE: "the TensorRT build plan (BuildPlan.to_dict), paths relative to this folder",
    SCRIPT_FILE: "builds the engine with trtexec",
    README_FILE: "this file",
    MODULES_FILE: "family kits: each module's target and TensorRT plan (build_engine.sh applies the device's)",
    NVINFER_CONFIG: "DeepStream nvinfer config (semantic segmentation), paths relative to this folder",
    LABELS_FILE: "class names, one a line (DeepStream labelfile-path)",
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
        f"This writes `{engine}` and its sidecar `{sidecar_name(engine)}` (GPU, TensorRT, preprocessing, layer "
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
    if (bundle / NVINFER_CONFIG).is_file():
        lines += deepstream_readme(facts.preprocessing, precision)
    present = sorted(path.name for path in bundle.iterdir() if path.is_file() and not path.name.startswith("."))
    # manifest.json and the reports are written by 'edgeseg build' after this stage, so they are listed anyway
    names = sorted(set(present) | set(KIT_FILES) | set(BUILD_FILES))
    lines += ["## Files", "", "| file | what |", "| --- | --- |"]
    for name in names:
        lines.append(f"| `{name}` | {_file_note(name)} |")
    lines += ["", f"Prepared by edgeseg {__version__}.", ""]
    return "\n".join(lines)


def deepstream_readme(preprocessing: dict, precision: str) -> list[str]:
    """The README section on running the engine under DeepStream (nvinfer_config.txt)."""
    from edgeseg.engine.deepstream import readme_section
    from edgeseg.zoo.contract import Preprocessing

    return readme_section(Preprocessing.from_dict(preprocessing), precision)


def render_built_readme(model: str, target: Target, preprocessing: dict, precision: str) -> str:
    """README.md of a bundle whose engine was built here, when it carries a DeepStream config."""
    return "\n".join([f"# edgeseg bundle: {model} for {target.name}", "", *deepstream_readme(preprocessing, precision)])
