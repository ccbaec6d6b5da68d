"""Exact rewrites of an exported ONNX graph: the same function, fewer memory-bound ops, for every backend.

Run by `edgeseg export` after onnxslim (and so checked by its torch parity check), before any quantization, so the
FP32 model that ONNX Runtime measures as the latency reference is the rewritten one too: a speed-up here shows up
in the reference and in the INT8 / OpenVINO variants alike, and the ratios between them stay honest.

Why these two: profiling SegFormer's decode head under OpenVINO's per-layer counters (PERF_COUNT) showed ~6 ms of
one 55 ms INT8 inference spent in layout plumbing, not arithmetic:

* identity Resize: HF SegFormer upsamples every stage to the first stage's size, including the first stage itself
  (90x120 -> 90x120, bilinear): an exact copy that costs a layout reorder plus an interpolation pass.
* token MLPs on a feature map: Reshape(N,C,H,W -> N,C,HW) -> Transpose -> MatMul/Gemm with a constant weight
  -> Transpose -> Reshape(N,C',H,W) is a 1x1 convolution. As a Conv, backends keep their blocked layouts and fuse
  quantization around it; as written, OpenVINO ran the int8 transposes with its reference kernel (2.8 ms for one).

And one that removes arithmetic:

* branch projections folded into the fuse convolution: SegFormer's decode head projects each of its four stages
  to 256 channels (a 1x1 conv), upsamples three of them to the first stage's size, concatenates the four (1024
  channels) and fuses them with a 1x1 conv back to 256. Both 1x1 convs are linear and a bilinear (or nearest)
  upsample mixes pixels with weights summing to 1, never channels, so F(concat(up_k(P_k x_k))) =
  sum_k up_k((F_k P_k) x_k): each branch gets one conv whose weights are the product of the two, at its own
  (small) resolution, and the 1024->256 conv at full decode resolution disappears. On SegFormer-B0 at 360x480
  that conv was 2.8 of the model's ~5.5 GMAC; ONNX Runtime FP32 ran the whole model in half the time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

# Resize coordinate modes under which an output of the input's own size samples exactly the input grid.
_IDENTITY_WHEN_SAME_SIZE = {"half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners", "half_pixel_symmetric"}


def rewrite_exact(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Apply the exact rewrites; returns (model, list of one-line notes of what was rewritten)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - onnx raises several types (and cannot infer over 2 GB); rewriting is optional
        return model, []
    graph = inferred.graph
    shapes = {value.name: _static_shape(value) for value in (*graph.value_info, *graph.input, *graph.output)}
    notes = _drop_identity_resizes(graph, shapes)
    notes += _token_mlps_to_convs(graph, shapes)
    notes += _fold_branch_projections(graph, shapes)
    if not notes:
        return model, []
    del graph.value_info[:]  # stale after the rewrite; backends infer shapes themselves
    used = {name for node in graph.node for name in node.input}
    unused = [tensor for tensor in graph.initializer if tensor.name not in used]
    for tensor in unused:  # the replaced weights, biases and reshape targets
        graph.initializer.remove(tensor)
    onnx.checker.check_model(inferred)
    return inferred, notes


def _static_shape(value: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    dims = value.type.tensor_type.shape.dim
    if not dims or any(not dim.HasField("dim_value") for dim in dims):
        return None
    return tuple(dim.dim_value for dim in dims)


def _consumers(graph: onnx.GraphProto) -> dict[str, list]:
    found: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _graph_index(graph: onnx.GraphProto) -> tuple[dict, dict, dict[str, list], set[str]]:
    """(initializers by name, producer node by tensor, consumer nodes by tensor, graph output names)."""
    return ({tensor.name: tensor for tensor in graph.initializer},
            {name: node for node in graph.node for name in node.output}, _consumers(graph),
            {value.name for value in graph.output})


def _attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _drop_identity_resizes(graph: onnx.GraphProto, shapes: dict) -> list[str]:
    outputs = {value.name for value in graph.output}
    rename, notes = {}, []
    for node in list(graph.node):
        if node.op_type != "Resize" or node.output[0] in outputs:
            continue
        before, after = shapes.get(node.input[0]), shapes.get(node.output[0])
        if before is None or before != after:
            continue
        if _attribute(node, "coordinate_transformation_mode", "half_pixel") not in _IDENTITY_WHEN_SAME_SIZE:
            continue  # tf_crop_and_resize samples a box, not the grid
        rename[node.output[0]] = node.input[0]
        graph.node.remove(node)
        notes.append(f"identity Resize {node.name} ({'x'.join(map(str, before))}) removed")
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in rename:
                node.input[index] = rename[name]
    return notes


def _token_mlps_to_convs(graph: onnx.GraphProto, shapes: dict) -> list[str]:
    from onnx import helper, numpy_helper

    constants, producers, consumers, outputs = _graph_index(graph)
    notes = []
    for node in list(graph.node):
        if node.op_type not in ("Gemm", "MatMul") or node.input[1] not in constants:
            continue
        chain = _mlp_chain(node, producers, consumers, outputs)
        if chain is None:
            continue
        first, last = chain[0], chain[-1]
        source, result = first.input[0], last.output[0]
        before, after = shapes.get(source), shapes.get(result)
        if before is None or after is None or len(before) != 4 or len(after) != 4 or before[0] != after[0] \
                or before[2:] != after[2:]:
            continue
        n, channels, height, width = before
        tokens = height * width
        flat = len(chain) == 7  # a Gemm between (N*HW, C) views
        expected = [(n, channels, tokens), (n, tokens, channels), *([(n * tokens, channels)] if flat else []),
                    *([(n * tokens, after[1])] if flat else []), (n, tokens, after[1]), (n, after[1], tokens)]
        if [shapes.get(step.output[0]) for step in chain[:-1]] != expected:
            continue  # a Reshape that regroups values differently: not a per-pixel linear map
        weight = numpy_helper.to_array(constants[node.input[1]]).astype(np.float32)
        bias = None
        if node.op_type == "Gemm":
            if _attribute(node, "transA", 0):
                continue
            weight = (weight if _attribute(node, "transB", 0) else weight.T) * _attribute(node, "alpha", 1.0)
            if len(node.input) > 2 and node.input[2]:
                if node.input[2] not in constants:
                    continue
                bias = numpy_helper.to_array(constants[node.input[2]]).astype(np.float32) * _attribute(node, "beta",
                                                                                                       1.0)
        else:
            weight = weight.T
        if weight.shape != (after[1], before[1]) or (bias is not None and bias.size not in (1, after[1])):
            continue
        weight_name = _unique(f"{node.name}.conv_weight", constants)
        graph.initializer.append(numpy_helper.from_array(weight[:, :, None, None].copy(), weight_name))
        inputs = [source, weight_name]
        if bias is not None:
            bias_name = _unique(f"{node.name}.conv_bias", constants)
            graph.initializer.append(numpy_helper.from_array(np.broadcast_to(bias.reshape(-1), (after[1],)).copy(),
                                                             bias_name))
            inputs.append(bias_name)
        conv = helper.make_node("Conv", inputs, [result], name=f"{node.name}/as_conv1x1", kernel_shape=[1, 1])
        position = list(graph.node).index(last)
        graph.node.insert(position, conv)
        for old in chain:
            graph.node.remove(old)
        notes.append(f"token MLP {node.name} ({before[1]}->{after[1]} channels on {before[2]}x{before[3]}) "
                     "as a 1x1 Conv")
    return notes


def _mlp_chain(node: onnx.NodeProto, producers: dict, consumers: dict, outputs: set) -> list | None:
    """[Reshape, Transpose, (Reshape), node, (Reshape), Transpose, Reshape] around `node`, each intermediate
    tensor used once and not a graph output; None when the pattern does not hold."""

    def only_consumer(current: onnx.NodeProto, op_types: tuple[str, ...]) -> onnx.NodeProto | None:
        users = consumers.get(current.output[0], [])
        if current.output[0] in outputs or len(users) != 1 or users[0].op_type not in op_types:
            return None
        return users[0]

    def producer(current: onnx.NodeProto, op_types: tuple[str, ...]) -> onnx.NodeProto | None:
        found = producers.get(current.input[0])
        if found is None or found.op_type not in op_types or found.output[0] in outputs \
                or len(consumers.get(found.output[0], [])) != 1:
            return None
        return found

    before = []
    current = producer(node, ("Reshape", "Transpose"))
    if current is not None and current.op_type == "Reshape":  # (N*HW, C) view for a Gemm
        before.insert(0, current)
        current = producer(current, ("Transpose",))
    if current is None or _attribute(current, "perm") != [0, 2, 1]:
        return None
    before.insert(0, current)
    current = producer(current, ("Reshape",))
    if current is None:
        return None
    before.insert(0, current)
    after = []
    current = only_consumer(node, ("Reshape", "Transpose"))
    if current is not None and current.op_type == "Reshape":
        after.append(current)
        current = only_consumer(current, ("Transpose",))
    if current is None or _attribute(current, "perm") != [0, 2, 1]:
        return None
    after.append(current)
    current = only_consumer(current, ("Reshape",))
    if current is None:
        return None
    after.append(current)
    return [*before, node, *after]


def _unique(name: str, taken: dict) -> str:
    candidate, suffix = name, 1
    while candidate in taken:
        candidate, suffix = f"{name}.{suffix}", suffix + 1
    taken[candidate] = None
    return candidate


_SUM_PRESERVING_RESIZE_MODES = ("linear", "nearest")  # interpolation weights sum to 1: constants pass unchanged


def _pointwise_conv(node: onnx.NodeProto, constants: dict) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(weight as out x in, bias or None) of a plain 1x1 convolution with constant parameters; None otherwise."""
    from onnx import numpy_helper

    if node.op_type != "Conv" or node.input[1] not in constants:
        return None
    if len(node.input) > 2 and node.input[2] and node.input[2] not in constants:
        return None
    weight = numpy_helper.to_array(constants[node.input[1]])
    if weight.ndim != 4 or weight.shape[2:] != (1, 1) or _attribute(node, "group", 1) != 1:
        return None
    if any(value != 1 for value in _attribute(node, "strides", [1, 1]) + _attribute(node, "dilations", [1, 1])):
        return None
    if any(_attribute(node, "pads", [0, 0, 0, 0])) or _attribute(node, "auto_pad", "NOTSET") not in ("NOTSET",
                                                                                                    "VALID"):
        return None
    bias = numpy_helper.to_array(constants[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
    return weight[:, :, 0, 0].astype(np.float64), None if bias is None else bias.astype(np.float64)


def _channel_preserving_resize(node: onnx.NodeProto, constants: dict) -> bool:
    """A Resize that interpolates pixels (weights summing to 1), never channels, with constant scales/sizes."""
    from onnx import numpy_helper

    if node.op_type != "Resize" or _attribute(node, "mode", "nearest") not in _SUM_PRESERVING_RESIZE_MODES:
        return False
    if _attribute(node, "coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize" \
            or _attribute(node, "antialias", 0) or _attribute(node, "axes") is not None:
        return False
    for index in (2, 3):  # scales, sizes
        if len(node.input) > index and node.input[index]:
            if node.input[index] not in constants:
                return False
            values = numpy_helper.to_array(constants[node.input[index]])
            if index == 2 and (values.size != 4 or values[1] != 1):
                return False
            if index == 3 and values.size != 4:
                return False
    return True


def _fold_branch_projections(graph: onnx.GraphProto, shapes: dict) -> list[str]:
    from onnx import helper, numpy_helper

    constants, producers, consumers, outputs = _graph_index(graph)

    def used_once(name: str) -> bool:
        return name not in outputs and len(consumers.get(name, [])) == 1

    notes = []
    for fuse in list(graph.node):
        fuse_params = _pointwise_conv(fuse, constants)
        concat = producers.get(fuse.input[0])
        if fuse_params is None or concat is None or concat.op_type != "Concat" or not used_once(concat.output[0]):
            continue
        if _attribute(concat, "axis") not in (1, -3) or len(shapes.get(concat.output[0]) or ()) != 4 \
                or len(concat.input) < 2:
            continue
        fuse_weight, fuse_bias = fuse_params
        branches = []
        for name in concat.input:
            resize, projection = None, producers.get(name)
            if projection is not None and projection.op_type == "Resize":
                resize = projection
                if not used_once(resize.output[0]) or not _channel_preserving_resize(resize, constants):
                    break
                projection = producers.get(resize.input[0])
            params = _pointwise_conv(projection, constants) if projection is not None else None
            if params is None or not used_once(projection.output[0]) or (shapes.get(name) or (0, 0))[1] != \
                    params[0].shape[0]:
                break
            branches.append((projection, resize, *params))
        if len(branches) != len(concat.input) or sum(branch[2].shape[0] for branch in branches) != \
                fuse_weight.shape[1]:
            continue
        out_channels = fuse_weight.shape[0]
        if any(out_channels > branch[2].shape[0] for branch in branches):
            continue  # a branch would get wider than it was: more arithmetic, not less
        column = 0
        for index, (projection, resize, weight, bias) in enumerate(branches):
            part = fuse_weight[:, column:column + weight.shape[0]]
            column += weight.shape[0]
            folded_bias = part @ bias if bias is not None else np.zeros(out_channels)
            if index == 0 and fuse_bias is not None:
                folded_bias = folded_bias + fuse_bias
            weight_name = _unique(f"{projection.name}.folded_weight", constants)
            bias_name = _unique(f"{projection.name}.folded_bias", constants)
            graph.initializer.extend([
                numpy_helper.from_array((part @ weight)[:, :, None, None].astype(np.float32), weight_name),
                numpy_helper.from_array(folded_bias.astype(np.float32), bias_name)])
            projection.input[1:] = [weight_name, bias_name]
            if resize is not None and len(resize.input) > 3 and resize.input[3]:
                sizes = numpy_helper.to_array(constants[resize.input[3]]).copy()
                sizes[1] = out_channels
                sizes_name = _unique(f"{resize.name}.folded_sizes", constants)
                graph.initializer.append(numpy_helper.from_array(sizes, sizes_name))
                resize.input[3] = sizes_name
        position = list(graph.node).index(fuse)
        total = concat.input[0]
        for index, name in enumerate(concat.input[1:], start=1):
            result = fuse.output[0] if index == len(concat.input) - 1 else f"{fuse.name}/folded_sum{index}"
            graph.node.insert(position, helper.make_node("Add", [total, name], [result],
                                                         name=f"{fuse.name}/folded_add{index}"))
            position += 1
            total = result
        graph.node.remove(concat)
        graph.node.remove(fuse)
        height, width = shapes[concat.output[0]][2:]
        saved = fuse_weight.size * height * width / 1e9
        notes.append(f"{len(branches)} branch projections folded into {fuse.name} ({fuse_weight.shape[1]}->"
                     f"{out_channels} 1x1 on {height}x{width}, {saved:.2f} GMAC per image less)")
    return notes
