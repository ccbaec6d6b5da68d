"""Exact graph rewrites (edgeseg/graph_rewrites.py) on small ONNX graphs shaped like SegFormer's decode head:
the rewritten graph computes what the original did (run by ONNX Runtime), and look-alikes that regroup values
differently are left alone."""

import numpy as np
import pytest
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgeseg.graph_rewrites import rewrite_exact


def decode_head(x_shape=(1, 8, 6, 8), height=6, width=8, gemm=True):
    """x (1,8,6,8) -> Reshape(1,8,48) -> Transpose -> [Reshape(48,8)] -> Gemm/MatMul (8->5) -> [Reshape(1,48,5)]
    -> Transpose -> Reshape(1,5,6,8) -> identity Resize -> Relu."""
    rng = np.random.default_rng(0)
    constants = [numpy_helper.from_array(np.array([1, 8, 48], np.int64), "to_tokens"),
                 numpy_helper.from_array(np.array([48, 8], np.int64), "flat_in"),
                 numpy_helper.from_array(np.array([1, 48, 5], np.int64), "flat_out"),
                 numpy_helper.from_array(np.array([1, 5, height, width], np.int64), "to_map"),
                 numpy_helper.from_array(np.array([1, 5, height, width], np.int64), "resize_to"),
                 numpy_helper.from_array(rng.normal(size=(5, 8) if gemm else (8, 5)).astype(np.float32), "w"),
                 numpy_helper.from_array(rng.normal(size=(5,)).astype(np.float32), "b")]
    nodes = [helper.make_node("Reshape", ["x", "to_tokens"], ["tokens"]),
             helper.make_node("Transpose", ["tokens"], ["tokens_t"], perm=[0, 2, 1])]
    if gemm:
        nodes += [helper.make_node("Reshape", ["tokens_t", "flat_in"], ["flat"]),
                  helper.make_node("Gemm", ["flat", "w", "b"], ["projected_flat"], transB=1),
                  helper.make_node("Reshape", ["projected_flat", "flat_out"], ["projected"])]
    else:
        nodes += [helper.make_node("MatMul", ["tokens_t", "w"], ["projected"])]
    nodes += [helper.make_node("Transpose", ["projected"], ["projected_t"], perm=[0, 2, 1]),
              helper.make_node("Reshape", ["projected_t", "to_map"], ["map"]),
              helper.make_node("Resize", ["map", "", "", "resize_to"], ["resized"], mode="linear",
                               coordinate_transformation_mode="half_pixel"),
              helper.make_node("Relu", ["resized"], ["y"])]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 6, 8])], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_token_mlp_becomes_a_1x1_conv_and_identity_resize_goes():
    x = np.random.default_rng(1).normal(size=(1, 8, 6, 8)).astype(np.float32)
    for gemm in (True, False):
        model = decode_head(gemm=gemm)
        expected = run(model, x)
        rewritten, notes = rewrite_exact(model)
        ops = [node.op_type for node in rewritten.graph.node]
        assert ops == ["Conv", "Relu"], ops
        assert len(notes) == 2 and "identity Resize" in notes[0] and "as a 1x1 Conv" in notes[1]
        assert {tensor.name for tensor in rewritten.graph.initializer} == {node.input[1] for node in
                                                                          rewritten.graph.node[:1]} | (
            {rewritten.graph.node[0].input[2]} if gemm else set())  # replaced constants dropped
        np.testing.assert_allclose(run(rewritten, x), expected, rtol=1e-5, atol=1e-5)


def test_a_reshape_that_regroups_values_is_not_taken_for_a_token_mlp():
    # x (1,6,8,8) viewed as (1,8,48) is not "channels by pixels": the Gemm would mix values of different pixels
    model = decode_head(x_shape=(1, 6, 8, 8))
    x = np.random.default_rng(2).normal(size=(1, 6, 8, 8)).astype(np.float32)
    expected = run(model, x)
    rewritten, notes = rewrite_exact(model)
    assert "Gemm" in [node.op_type for node in rewritten.graph.node]
    assert all("token MLP" not in note for note in notes)
    np.testing.assert_allclose(run(rewritten, x), expected, rtol=1e-6)


def test_nothing_to_rewrite_returns_the_model_untouched():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    same, notes = rewrite_exact(model)
    assert same is model and notes == []


def mlp_decoder(width=4, fuse_out=4, mode="linear", relu_in_branch=False, fuse_bias=True):
    """Three branches like SegFormer's decode head: a 1x1 projection (to `width` channels) of a feature map at
    full, 1/2 and 1/4 size, the smaller two upsampled (sizes / scales), concatenated, fused by a 1x1 conv."""
    rng = np.random.default_rng(3)
    inputs, nodes, constants, branches = [], [], [], []
    for index, (channels, side) in enumerate(((3, 8), (5, 4), (6, 2))):
        name = f"x{index}"
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, channels, side, side]))
        constants += [numpy_helper.from_array(rng.normal(size=(width, channels, 1, 1)).astype(np.float32), f"p{index}"),
                      numpy_helper.from_array(rng.normal(size=(width,)).astype(np.float32), f"pb{index}")]
        projected = f"projected{index}"
        nodes.append(helper.make_node("Conv", [name, f"p{index}", f"pb{index}"], [projected], name=f"proj{index}"))
        if relu_in_branch:
            nodes.append(helper.make_node("Relu", [projected], [f"{projected}_relu"]))
            projected = f"{projected}_relu"
        if side != 8:
            if index == 1:  # by sizes, as HF SegFormer exports it
                constants.append(numpy_helper.from_array(np.array([1, width, 8, 8], np.int64), f"size{index}"))
                resize_inputs = [projected, "", "", f"size{index}"]
            else:
                constants.append(numpy_helper.from_array(np.array([1, 1, 4, 4], np.float32), f"scale{index}"))
                resize_inputs = [projected, "", f"scale{index}"]
            nodes.append(helper.make_node("Resize", resize_inputs, [f"up{index}"], mode=mode,
                                          coordinate_transformation_mode="half_pixel"))
            projected = f"up{index}"
        branches.append(projected)
    constants.append(numpy_helper.from_array(rng.normal(size=(fuse_out, 3 * width, 1, 1)).astype(np.float32), "f"))
    fuse_inputs = ["cat", "f"]
    if fuse_bias:
        constants.append(numpy_helper.from_array(rng.normal(size=(fuse_out,)).astype(np.float32), "fb"))
        fuse_inputs.append("fb")
    nodes += [helper.make_node("Concat", branches, ["cat"], axis=1),
              helper.make_node("Conv", fuse_inputs, ["fused"], name="fuse"),
              helper.make_node("Relu", ["fused"], ["y"])]
    graph = helper.make_graph(nodes, "decoder", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, fuse_out, 8, 8])], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def decoder_inputs():
    rng = np.random.default_rng(4)
    return {f"x{index}": rng.normal(size=(1, channels, side, side)).astype(np.float32)
            for index, (channels, side) in enumerate(((3, 8), (5, 4), (6, 2)))}


def run_all(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("mode,fuse_bias,fuse_out", [("linear", True, 4), ("nearest", True, 4), ("linear", False, 4),
                                                     ("linear", True, 3)])
def test_branch_projections_fold_into_the_fuse_conv(mode, fuse_bias, fuse_out):
    """fuse_out 3 < branch width 4: the folded branches get narrower, and a resize given by sizes follows."""
    model = mlp_decoder(mode=mode, fuse_bias=fuse_bias, fuse_out=fuse_out)
    feeds = decoder_inputs()
    expected = run_all(model, feeds)
    rewritten, notes = rewrite_exact(model)
    ops = [node.op_type for node in rewritten.graph.node]
    assert "Concat" not in ops and ops.count("Conv") == 3 and ops.count("Add") == 2, ops
    assert len(notes) == 1 and f"3 branch projections folded into fuse (12->{fuse_out} 1x1 on 8x8" in notes[0]
    np.testing.assert_allclose(run_all(rewritten, feeds), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(relu_in_branch=True), dict(mode="cubic"), dict(fuse_out=6)],
                         ids=["relu-between", "cubic-resize", "fuse-wider-than-a-branch"])
def test_branch_folding_leaves_look_alikes_alone(kwargs):
    """A ReLU between projection and concat does not commute with the fuse conv; only linear and nearest resizes
    are handled (cubic is left as it is); a fuse conv wider than a branch would make that branch's conv bigger,
    not the model cheaper."""
    model = mlp_decoder(**kwargs)
    rewritten, notes = rewrite_exact(model)
    assert notes == [] and "Concat" in [node.op_type for node in rewritten.graph.node]
