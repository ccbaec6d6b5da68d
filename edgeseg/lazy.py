"""Import optional heavy packages only when a command needs them.

The device side (engines, demo) must run without torch, and TensorRT/pycuda/torch-pruning/OpenVINO are extras,
so they are imported here on first use with an error that names the pip extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from edgeseg.errors import MissingDependency

# package -> extra of edgeseg that installs it
EXTRAS = {
    "tensorrt": "trt",
    "pycuda": "trt",
    "torch_pruning": "prune",
    "torch": "torch",
    "onnxruntime": "onnx",
    "onnx": "onnx",
    "matplotlib": "bench",
    "openvino": "openvino",
    "nncf": "openvino",
}


def lazy_import(module: str, extra: str | None = None) -> ModuleType:
    """Import `module` or raise MissingDependency telling which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = extra or EXTRAS.get(top)
        hint = f"pip install 'edgeseg[{extra}]'" if extra else f"pip install {top}"
        raise MissingDependency(f"this command needs the '{top}' package ({exc}); install it with: {hint}") from exc
