"""Exact rewrites of an OpenVINO model that OpenVINO's CPU plugin does not make itself. Imports no torch.

`split_output_resizes`: a segmentation model ends by resizing its logits to the input size (bilinear, 4x for
SegFormer and DeepLabV3+), often followed by a crop (a model padded to a multiple of its stride is cut back).
OpenVINO runs that Interpolate channels-last like the convolution before it, then reorders the full-size logits
into the NCHW output and crops them with a reference Slice: about 6 of DeepLabV3+'s 34 ms on one core (profiled
with PERF_COUNT). Bilinear and nearest resizing are separable, so the same values come from resizing H and then
W of a 3D (N*C, H, W) view, which OpenVINO runs planar, with no full-size reorder:
- H first, at the low resolution. A bilinear H resize is two row Gathers and a blend (row + (next row - row) *
  weight, with edgeseg's own interpolation weights, `linear_taps`, checked against OpenVINO for every ONNX
  coordinate mode): whole contiguous rows, where OpenVINO would run an H-only Interpolate between two transposes.
  An H crop is folded into the gathered rows. Nearest keeps an Interpolate (its rounding ties are OpenVINO's).
- then W, one Interpolate on the last axis, then a W crop.
The result is the same up to float rounding order (tested against the unrewritten model). Only float tails are
touched: a resize whose output is quantized again (FakeQuantize) is left as it is, since moving that FakeQuantize
to the full-size output costs what the split saves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeseg.lazy import lazy_import

SPLIT_OUTPUT_RESIZE = "split-output-resize"
_SEPARABLE_MODES = ("linear_onnx", "nearest")
_COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "asymmetric", "tf_half_pixel_for_nn", "align_corners")
_SPATIAL_AXES = (2, 3)


@dataclass(frozen=True)
class _Crop:
    axis: int  # 2 (H) or 3 (W) of the NCHW tensor
    start: int
    stop: int


@dataclass(frozen=True)
class _Tail:
    resize: Any  # the Interpolate node (openvino.Node)
    values: dict[int, float | int]  # spatial axis -> scale (shape_calculation_mode "scales") or size ("sizes")
    crops: tuple[_Crop, ...]
    shape: tuple[int, int, int, int]  # the resize's static NCHW input shape


def split_output_resizes(model: Any) -> list[str]:  # an openvino.Model, changed in place
    """Rewrite every output that is a separable 4D resize (+ a crop) of float logits; returns the names of the
    resizes rewritten ([] when none matched, the model untouched)."""
    rewritten = []
    for result in model.get_results():
        tail = _output_tail(result)
        if tail is not None:
            _rewrite(result, tail)
            rewritten.append(tail.resize.get_friendly_name())
    if rewritten:
        model.validate_nodes_and_infer_types()
    return rewritten


def _output_tail(result: Any) -> _Tail | None:
    node = result.input_value(0).get_node()
    crops: list[_Crop] = []
    while node.get_type_name() == "Slice":  # torch exports x[:, :, :h, :w] as one Slice per axis
        found = _constant_crops(node)
        if found is None or not _single_consumer(node.input_value(0)):
            return None
        crops += found
        node = node.input_value(0).get_node()
    if len({crop.axis for crop in crops}) != len(crops):
        return None  # one axis cropped twice: not worth composing
    if node.get_type_name() != "Interpolate" or node.get_type_info().version_id != "opset11":
        return None
    attributes = node.get_attributes()
    if (attributes["mode"] not in _SEPARABLE_MODES or attributes["antialias"]
            or attributes["coordinate_transformation_mode"] not in _COORDINATE_MODES
            or any(attributes["pads_begin"]) or any(attributes["pads_end"])):
        return None
    data = node.input_value(0)
    if data.get_element_type().get_type_name() != "f32" or not data.get_partial_shape().is_static:
        return None
    shape = tuple(int(dim) for dim in data.get_shape())
    values = _per_axis_values(node, attributes["shape_calculation_mode"], shape) if len(shape) == 4 else None
    if values is None:
        return None
    return _Tail(node, values, tuple(crops), shape)  # type: ignore[arg-type]


def _single_consumer(output: Any) -> bool:
    return len(output.get_target_inputs()) == 1


def _constant(output: Any) -> np.ndarray | None:
    node = output.get_node()
    return node.get_data() if node.get_type_name() == "Constant" else None


def _per_axis_values(node: Any, mode: str, shape: tuple[int, ...]) -> dict[int, float | int] | None:
    """Spatial axis -> the scale or size the resize gives it; None unless only H and W are resized."""
    values = _constant(node.input_value(1))
    axes = list(range(len(shape)))
    if values is None and mode == "sizes" and node.get_output_partial_shape(0).is_static:
        # sizes computed from the input's shape (torch's size=): static here, so the output shape says them
        values = np.array([int(dim) for dim in node.get_output_partial_shape(0).to_shape()])
    elif values is None:
        return None
    elif node.get_input_size() > 2:
        given = _constant(node.input_value(2))
        if given is None:
            return None
        axes = [int(axis) % len(shape) for axis in given]
    identity = {axis: (1.0 if mode == "scales" else shape[axis]) for axis in range(len(shape))}
    found = {}
    for axis, value in zip(axes, values.tolist()):
        if axis not in _SPATIAL_AXES and value != identity[axis]:
            return None  # resizes batch or channels: not a logits upsample
        if axis in _SPATIAL_AXES and value != identity[axis]:
            found[axis] = value
    return found or None


def _constant_crops(node: Any) -> tuple[_Crop, ...] | None:
    """A Slice-8 of constant starts/stops with step 1 on H and/or W only, as crops; None otherwise."""
    if node.get_type_info().version_id != "opset8":
        return None
    arrays = [_constant(node.input_value(index)) for index in range(1, node.get_input_size())]
    if any(array is None for array in arrays):
        return None
    shape = node.input_value(0).get_partial_shape()
    if not shape.is_static or len(shape) != 4:
        return None
    dims = [int(dim) for dim in node.input_value(0).get_shape()]
    starts, stops, steps = arrays[:3]
    axes = arrays[3] if len(arrays) > 3 else np.arange(len(starts))
    crops = []
    for start, stop, step, axis in zip(starts.tolist(), stops.tolist(), steps.tolist(), axes.tolist()):
        axis = int(axis) % 4
        begin, end, _ = slice(int(start), int(stop), 1).indices(dims[axis])
        if step != 1 or (axis not in _SPATIAL_AXES and (begin, end) != (0, dims[axis])):
            return None
        if (begin, end) != (0, dims[axis]):
            crops.append(_Crop(axis, begin, end))
    return tuple(crops)


def _rewrite(result: Any, tail: _Tail) -> None:
    ops = lazy_import("openvino.opset11", extra="openvino")
    batch, channels, height, width = tail.shape
    old_output = result.input_value(0)
    names = old_output.get_names()
    old_output.get_tensor().set_names(set())  # the names move to the new output
    crops = {crop.axis: crop for crop in tail.crops}
    x = ops.reshape(tail.resize.input_value(0), np.array([batch * channels, height, width], np.int64), False)
    for axis, crop in crops.items():  # a crop of an axis the resize leaves alone: first, on the small tensor
        if axis not in tail.values:
            x = _slice(ops, x, crop)
    if 2 in tail.values:
        x = _resize_rows(ops, x, tail, crops.get(2))
    if 3 in tail.values:
        x = _interpolate(ops, x, tail, 3)
        if 3 in crops:
            x = _slice(ops, x, crops[3])
    out_height, out_width = (int(dim) for dim in x.output(0).get_partial_shape().to_shape()[1:])
    x = ops.reshape(x, np.array([batch, channels, out_height, out_width], np.int64), False)
    x.output(0).get_tensor().set_names(names)
    result.input(0).replace_source_output(x.output(0))


def _interpolate(ops: Any, x: Any, tail: _Tail, axis: int) -> Any:  # an openvino.Node
    """The resize of one NCHW axis on the (N*C, H, W) view, with the original resize's attributes."""
    attributes = tail.resize.get_attributes()
    scales = attributes["shape_calculation_mode"] == "scales"
    value = np.array([tail.values[axis]], np.float32 if scales else np.int64)
    return ops.interpolate(x, value, attributes["mode"], attributes["shape_calculation_mode"],
                           pads_begin=[0, 0, 0], pads_end=[0, 0, 0],
                           coordinate_transformation_mode=attributes["coordinate_transformation_mode"],
                           nearest_mode=attributes["nearest_mode"], cube_coeff=attributes["cube_coeff"],
                           axes=np.array([axis - 1], np.int64))


def _resize_rows(ops: Any, x: Any, tail: _Tail, crop: _Crop | None) -> Any:  # an openvino.Node
    """The H resize (+ its crop). OpenVINO runs an H-only Interpolate between two transposes of the tensor; a
    bilinear one is instead two row Gathers and a blend, row + (next row - row) * weight, which read whole
    contiguous rows, and only the rows the crop keeps are made. Nearest keeps the Interpolate (its rounding
    ties are OpenVINO's to decide)."""
    attributes = tail.resize.get_attributes()
    if attributes["mode"] != "linear_onnx":
        x = _interpolate(ops, x, tail, 2)
        return _slice(ops, x, crop) if crop else x
    first, second, weight = linear_taps(tail.shape[2], _output_length(tail, 2), _scale(tail, 2),
                                        attributes["coordinate_transformation_mode"])
    if crop:
        first, second, weight = first[crop.start:crop.stop], second[crop.start:crop.stop], weight[crop.start:crop.stop]
    axis = np.array(1, np.int64)
    rows = ops.gather(x, first, axis)
    step = ops.subtract(ops.gather(x, second, axis), rows)
    return ops.add(rows, ops.multiply(step, weight.reshape(1, -1, 1)))


def _output_length(tail: _Tail, axis: int) -> int:
    return int(tail.resize.get_output_partial_shape(0).to_shape()[axis])


def _scale(tail: _Tail, axis: int) -> float:
    """The scale the coordinate transform divides by: the given one, or output / input length for sizes."""
    if tail.resize.get_attributes()["shape_calculation_mode"] == "scales":
        return float(tail.values[axis])
    return _output_length(tail, axis) / tail.shape[axis]


def linear_taps(length: int, out_length: int, scale: float, coordinate_mode: str
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output position of a 1D linear (ONNX / linear_onnx) resize: the two input positions it blends
    and the weight of the second, as ONNX Resize and OpenVINO's linear_onnx compute them (source coordinate
    clamped to the input)."""
    out = np.arange(out_length, dtype=np.float64)
    if coordinate_mode == "align_corners":
        source = out * (length - 1) / (out_length - 1) if out_length > 1 else np.zeros_like(out)
    elif coordinate_mode == "asymmetric":
        source = out / scale
    elif coordinate_mode == "pytorch_half_pixel":
        source = (out + 0.5) / scale - 0.5 if out_length > 1 else np.zeros_like(out)
    elif coordinate_mode == "tf_half_pixel_for_nn":
        source = (out + 0.5) / scale
    else:  # half_pixel
        source = (out + 0.5) / scale - 0.5
    source = np.clip(source, 0, length - 1)
    first = np.floor(source).astype(np.int64)
    second = np.minimum(first + 1, length - 1)
    return first, second, (source - first).astype(np.float32)


def _slice(ops: Any, x: Any, crop: _Crop) -> Any:  # openvino.opset11, an openvino.Node
    """The crop on the (N*C, H, W) view, whose axes are the NCHW ones less one."""
    return ops.slice(x, np.array([crop.start], np.int64), np.array([crop.stop], np.int64), np.array([1], np.int64),
                     np.array([crop.axis - 1], np.int64))
