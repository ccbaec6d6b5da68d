"""The file names of a build bundle's engine stage and its cross-build kit (pure: no imports, no I/O).

Which ONNX a precision builds from, the calibration manifest, the kit's files, and the engine's name.
"""

from __future__ import annotations

ONNX_FOR_PRECISION = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
CALIBRATION_MANIFEST = "calibration.json"
PLAN_FILE, TARGET_FILE, SCRIPT_FILE, README_FILE = "plan.json", "target.toml", "build_engine.sh", "README.md"
MODULES_FILE, FAMILY_TARGETS_DIR = "modules.json", "targets"  # family kits only
KIT_FILES = (TARGET_FILE, PLAN_FILE, SCRIPT_FILE, README_FILE)


def engine_name(precision: str) -> str:
    return f"model.{precision}.engine"
