"""Small real ONNX models and a fake build bundle for the engine tests (built with onnx.helper, no torch).

The model is Conv(3->K, 3x3) + Relu on 1x3x32x32 (K: the classes of its contract, 2 by default), named like
edgeseg's exports (input pixel_values, output logits), with the edgeseg metadata; the INT8 variant carries real
QuantizeLinear/DequantizeLinear nodes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeseg.zoo.contract import Preprocessing

PREPROCESSING = Preprocessing(input_size=(32, 32), classes=("a", "b"), palette=((0, 0, 0), (255, 255, 255)))
INPUT_NAME = "pixel_values"


def make_model(precision: str = "fp32", dynamic: bool = False, preprocessing: bool = True,
               contract: Preprocessing = PREPROCESSING, model_name: str = "tiny-conv") -> onnx.ModelProto:
    """precision fp32 / fp16 (an fp32 graph marked fp16 is enough for the planner) / int8 (Q/DQ nodes); one
    output channel per class of `contract`, whose input size must stay 32x32."""
    classes = contract.num_classes
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.2, (classes, 3, 3, 3)).astype(np.float32)
    bias = np.zeros(classes, np.float32)
    dims = ["batch", 3, "height", "width"] if dynamic else [1, 3, 32, 32]
    out_dims = ["batch", classes, "height", "width"] if dynamic else [1, classes, 32, 32]
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, dims)]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_dims)]
    initializers = [numpy_helper.from_array(bias, "bias")]
    nodes = []
    conv_input, conv_weight = INPUT_NAME, "weight"
    if precision == "int8":
        scale = numpy_helper.from_array(np.array(0.05, np.float32), "scale")
        zero = numpy_helper.from_array(np.array(0, np.int8), "zero")
        quantized_weight = np.clip(np.round(weights / 0.01), -127, 127).astype(np.int8)
        initializers += [scale, zero, numpy_helper.from_array(quantized_weight, "weight_q"),
                         numpy_helper.from_array(np.array(0.01, np.float32), "weight_scale")]
        nodes += [
            helper.make_node("QuantizeLinear", [INPUT_NAME, "scale", "zero"], ["x_q"]),
            helper.make_node("DequantizeLinear", ["x_q", "scale", "zero"], ["x_dq"]),
            helper.make_node("DequantizeLinear", ["weight_q", "weight_scale"], ["weight_dq"]),
        ]
        conv_input, conv_weight = "x_dq", "weight_dq"
    else:
        initializers.append(numpy_helper.from_array(weights, "weight"))
    nodes += [helper.make_node("Conv", [conv_input, conv_weight, "bias"], ["conv"], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["conv"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgeseg-test")
    model.ir_version = 8
    metadata = {"edgeseg.output": "logits", "edgeseg.model": model_name, "edgeseg.precision": precision}
    if preprocessing:
        metadata["edgeseg.preprocessing"] = contract.to_json()
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return model


def make_bundle(root: Path, with_int8: bool = True, contract: Preprocessing = PREPROCESSING,
                model_name: str = "tiny-conv") -> Path:
    """A bundle folder like 'edgeseg build' writes, before its engine stage."""
    root.mkdir(parents=True, exist_ok=True)
    files = {precision_file: make_model(precision, contract=contract, model_name=model_name)
             for precision_file, precision in (("model.onnx", "fp32"), ("model.fp16.onnx", "fp16"))}
    if with_int8:
        files["model.int8.onnx"] = make_model("int8", contract=contract, model_name=model_name)
    for name, model in files.items():
        onnx.save(model, str(root / name))
        (root / f"{name}.json").write_text(json.dumps({"stage": "test", "precision": name}) + "\n")
    (root / "calibration.json").write_text(json.dumps(
        {"format": "edgeseg-calibration", "schema": 1, "source": {"dataset": "camvid", "split": "train"},
         "strategy": "random", "count": 0, "preprocessing": contract.to_dict(), "images": []}) + "\n")
    return root
