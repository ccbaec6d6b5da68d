"""ONNX Runtime INT8: the Q/DQ pair quantize_static leaves in front of Softmax (which ORT fuses into its slow
QLinearSoftmax) is removed, and the attention block computes what it did, with one rounding fewer."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from edgeseg.quantize import float_softmax_inputs


class _Reader(CalibrationDataReader):
    def __init__(self):
        rng = np.random.default_rng(0)
        self._batches = iter([{"x": rng.normal(size=(1, 16, 8)).astype(np.float32)} for _ in range(8)])

    def get_next(self):
        return next(self._batches, None)


def attention_model(path):
    """scores = x @ Wq @ (x @ Wk)^T; out = softmax(scores) @ (x @ Wv): the shape of SegFormer's attention."""
    rng = np.random.default_rng(1)
    weights = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 8)).astype(np.float32), name) for name in "qkv"]
    nodes = [helper.make_node("MatMul", ["x", "q"], ["xq"]), helper.make_node("MatMul", ["x", "k"], ["xk"]),
             helper.make_node("MatMul", ["x", "v"], ["xv"]),
             helper.make_node("Transpose", ["xk"], ["xkt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["xq", "xkt"], ["scores"]),
             helper.make_node("Softmax", ["scores"], ["attention"], axis=-1),
             helper.make_node("MatMul", ["attention", "xv"], ["out"])]
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 16, 8])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_softmax_input_pair_is_removed_and_outputs_stay_close(tmp_path):
    float_path, int8_path = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    attention_model(float_path)
    quantize_static(str(float_path), str(int8_path), _Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=False)
    graph = onnx.load(str(int8_path))
    producers = {output: node for node in graph.graph.node for output in node.output}
    softmax = next(node for node in graph.graph.node if node.op_type == "Softmax")
    assert producers[softmax.input[0]].op_type == "DequantizeLinear"  # what ORT fuses into QLinearSoftmax

    assert float_softmax_inputs(graph) == 1
    onnx.checker.check_model(graph)
    producers = {output: node for node in graph.graph.node for output in node.output}
    softmax = next(node for node in graph.graph.node if node.op_type == "Softmax")
    assert producers[softmax.input[0]].op_type == "MatMul"
    assert float_softmax_inputs(graph) == 0  # nothing left to remove
    fixed = tmp_path / "fixed.onnx"
    onnx.save(graph, str(fixed))

    x = np.random.default_rng(2).normal(size=(1, 16, 8)).astype(np.float32)
    reference, before, after = run(float_path, x), run(int8_path, x), run(fixed, x)
    assert np.abs(after - reference).max() <= np.abs(before - reference).max() * 1.5 + 1e-3
    assert np.abs(after - reference).max() < 0.2
