"""Logits -> label map: the argmax every segmentation output needs before it is drawn.

numpy's argmax over the class axis of an NCHW array is slow (the class axis is not the last one, so it copies
the logits to make it so): ~7 ms for 11x360x480 on one core of a small CPU. ONNX Runtime's ArgMax kernel walks
the planes in place and takes ~2 ms. In a pipelined demo on a 2-core machine that difference is CPU time taken
away from the model, so when onnx and onnxruntime are importable a one-node ArgMax graph does the work; otherwise
(a Jetson running TensorRT without onnxruntime) numpy does. Both pick the first class on ties.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

# logits dtype name -> ONNX Runtime session, or None where it is unavailable
_sessions: dict[str, InferenceSession | None] = {}
_lock = threading.Lock()


def labels_from_logits(logits: np.ndarray) -> np.ndarray:
    """1xKxHxW (or KxHxW) logits -> HxW uint8 labels."""
    logits = np.asarray(logits)
    if logits.ndim == 4:
        if logits.shape[0] != 1:
            raise ValueError(f"expected one image of logits, got batch {logits.shape[0]}")
        logits = logits[0]
    if logits.ndim != 3:
        raise ValueError(f"expected KxHxW logits, got shape {logits.shape}")
    session = _argmax_session(logits.dtype)
    if session is None:
        return logits.argmax(axis=0).astype(np.uint8)
    return session.run(None, {"logits": np.ascontiguousarray(logits)[None]})[0][0]


def _argmax_session(dtype: np.dtype) -> InferenceSession | None:
    key = np.dtype(dtype).name
    with _lock:
        if key not in _sessions:
            _sessions[key] = _build_session(np.dtype(dtype))
        return _sessions[key]


def _build_session(dtype: np.dtype) -> InferenceSession | None:
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    element_type = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}.get(dtype.name)
    if element_type is None:
        return None
    graph = helper.make_graph(
        [helper.make_node("ArgMax", ["logits"], ["index"], axis=1, keepdims=0),
         helper.make_node("Cast", ["index"], ["labels"], to=TensorProto.UINT8)],
        "edgeseg-argmax",
        [helper.make_tensor_value_info("logits", element_type, [1, "classes", "height", "width"])],
        [helper.make_tensor_value_info("labels", TensorProto.UINT8, [1, "height", "width"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 8)  # loadable by older ONNX Runtime releases too
    options = ort.SessionOptions()
    # One thread, no spinning: this runs beside the model's own threads and must not compete with them.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 (an ONNX Runtime without this kernel: numpy still gives the same labels)
        return None
