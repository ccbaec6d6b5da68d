"""What an engine build needs to know about an ONNX file, read without the onnx package.

The device side (a Jetson with JetPack's TensorRT) usually has no `onnx` Python package, yet the builder must
know the graph's precision, whether it carries Q/DQ nodes, its input and the edgeseg metadata (the preprocessing
contract copied into the engine's sidecar). Those live in a handful of top-level protobuf fields, so this module
walks the protobuf wire format directly: ModelProto.graph (7) and .metadata_props (14); GraphProto.node (1),
.initializer (5) and .input (11). Weights are skipped by length, never decoded, so a large model reads fast.
"""

from __future__ import annotations

import json
import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from edgeseg.errors import UsageError

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
METADATA_PREPROCESSING = "edgeseg.preprocessing"
METADATA_OUTPUT = "edgeseg.output"
METADATA_PRECISION = "edgeseg.precision"

# onnx.TensorProto.DataType values that matter for a segmentation input
_ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 7: "int64", 10: "float16", 16: "bfloat16"}

# protobuf field numbers (onnx/onnx.proto)
_MODEL_GRAPH, _MODEL_METADATA = 7, 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT = 1, 5, 11
_NODE_OP_TYPE = 4
_TENSOR_NAME = 8
_VALUE_INFO_NAME, _VALUE_INFO_TYPE = 1, 2
_TYPE_TENSOR = 1
_TENSOR_TYPE_ELEM, _TENSOR_TYPE_SHAPE = 1, 2
_SHAPE_DIM = 1
_DIM_VALUE, _DIM_PARAM = 1, 2


@dataclass(frozen=True)
class OnnxFacts:
    metadata: dict[str, str]
    op_types: frozenset[str]  # op types of the top-level graph (subgraphs of If/Loop are not read)
    input_name: str
    input_shape: tuple[int | str, ...]  # str: a symbolic or unknown dimension
    input_dtype: str

    @property
    def has_qdq(self) -> bool:
        return bool(self.op_types & QDQ_OPS)

    @property
    def static_input(self) -> bool:
        return all(isinstance(dim, int) and dim > 0 for dim in self.input_shape)

    @property
    def declared_precision(self) -> str:
        """The precision edgeseg wrote into the metadata (fp32 when the file does not say)."""
        return self.metadata.get(METADATA_PRECISION, "fp32")

    @property
    def onnx_precision(self) -> str:
        """The plan's ONNX precision: fp32, fp16 or int8-qdq (fp16 with Q/DQ: fp16 float parts around INT8)."""
        if self.has_qdq:
            return "fp16" if self.declared_precision == "fp16" else "int8-qdq"
        return "fp16" if self.declared_precision == "fp16" else "fp32"

    @property
    def preprocessing(self) -> dict | None:
        text = self.metadata.get(METADATA_PREPROCESSING)
        return None if text is None else json.loads(text)

    @property
    def output_kind(self) -> str:
        return self.metadata.get(METADATA_OUTPUT, "logits")


def read_onnx_facts(path: str | Path) -> OnnxFacts:
    """Read the facts of the ONNX model at `path`; UsageError if it is missing or not an ONNX model."""
    path = Path(path)
    try:
        # The map is not closed explicitly: views into it may outlive a failed parse (in the traceback), and
        # closing a map with live views raises BufferError; it is unmapped when the last view is gone.
        with open(path, "rb") as handle:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        return _parse_model(memoryview(mapped))
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist") from None
    except (ValueError, IndexError, UnicodeDecodeError) as exc:  # mmap of an empty file raises ValueError too
        raise UsageError(f"{path} is not a valid ONNX model ({exc})") from None


def _parse_model(buffer: memoryview) -> OnnxFacts:
    metadata: dict[str, str] = {}
    graph = None
    for number, value in _fields(buffer):
        if number == _MODEL_METADATA and isinstance(value, memoryview):
            entry = {key: bytes(item).decode() for key, item in _fields(value) if isinstance(item, memoryview)}
            metadata[entry.get(_ENTRY_KEY, "")] = entry.get(_ENTRY_VALUE, "")
        elif number == _MODEL_GRAPH and isinstance(value, memoryview):
            graph = value
    if graph is None:
        raise ValueError("no graph")
    op_types, initializers, inputs = set(), set(), []
    for number, value in _fields(graph):
        if not isinstance(value, memoryview):
            continue
        if number == _GRAPH_NODE:
            op_types.update(bytes(v).decode() for n, v in _fields(value) if n == _NODE_OP_TYPE)
        elif number == _GRAPH_INITIALIZER:
            initializers.update(bytes(v).decode() for n, v in _fields(value) if n == _TENSOR_NAME)
        elif number == _GRAPH_INPUT:
            inputs.append(_value_info(value))
    # Old exporters list weights as graph inputs too; the model's input is the first one that is not a weight.
    real_inputs = [item for item in inputs if item[0] not in initializers]
    if not real_inputs:
        raise ValueError("the graph has no input")
    name, shape, dtype = real_inputs[0]
    return OnnxFacts(metadata=metadata, op_types=frozenset(op_types), input_name=name, input_shape=shape,
                     input_dtype=dtype)


def _value_info(buffer: memoryview) -> tuple[str, tuple[int | str, ...], str]:
    name, shape, dtype = "", (), "unknown"
    for number, value in _fields(buffer):
        if number == _VALUE_INFO_NAME and isinstance(value, memoryview):
            name = bytes(value).decode()
        elif number == _VALUE_INFO_TYPE and isinstance(value, memoryview):
            for type_number, tensor in _fields(value):
                if type_number == _TYPE_TENSOR and isinstance(tensor, memoryview):
                    shape, dtype = _tensor_type(tensor)
    return name, shape, dtype


def _tensor_type(buffer: memoryview) -> tuple[tuple[int | str, ...], str]:
    dims: list[int | str] = []
    dtype = "unknown"
    for number, value in _fields(buffer):
        if number == _TENSOR_TYPE_ELEM and isinstance(value, int):
            dtype = _ELEM_TYPES.get(value, f"onnx type {value}")
        elif number == _TENSOR_TYPE_SHAPE and isinstance(value, memoryview):
            for dim_number, dim in _fields(value):
                if dim_number == _SHAPE_DIM and isinstance(dim, memoryview):
                    dims.append(_dimension(dim))
    return tuple(dims), dtype


def _dimension(buffer: memoryview) -> int | str:
    for number, value in _fields(buffer):
        if number == _DIM_VALUE and isinstance(value, int):
            return value - (1 << 64) if value >= 1 << 63 else value  # int64 on the wire: -1 is 2**64 - 1
        if number == _DIM_PARAM and isinstance(value, memoryview):
            return bytes(value).decode() or "?"
    return "?"  # neither set: unknown


# ---------------------------------------------------------------------------------------------------------------
# The protobuf wire format: (field number, value) pairs; value is an int (varint) or a memoryview (bytes)

def _varint(buffer: memoryview, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buffer: memoryview) -> Iterator[tuple[int, int | memoryview | None]]:
    position, end = 0, len(buffer)
    while position < end:
        key, position = _varint(buffer, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(buffer, position)
            yield number, value
        elif wire_type == 2:
            length, position = _varint(buffer, position)
            if position + length > end:
                raise ValueError("truncated field")
            yield number, buffer[position:position + length]
            position += length
        elif wire_type == 1:  # fixed 64-bit (doubles): not needed here
            position += 8
            yield number, None
        elif wire_type == 5:  # fixed 32-bit (floats)
            position += 4
            yield number, None
        else:  # 3/4 are protobuf groups, which ONNX never uses: this is not an ONNX file
            raise ValueError(f"unexpected protobuf wire type {wire_type}")
    if position != end:
        raise ValueError("truncated message")
