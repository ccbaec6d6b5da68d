"""The OpenVINO runner's exact rewrite of a model's output resize (edgeseg/runners/ov_rewrites.py), on plain
torch.onnx.export models edgeseg did not make: the split model computes what the original does (OpenVINO both
times), the full-size reorder it exists to remove is gone from the compiled graph, and look-alikes are left alone."""

from __future__ import annotations

import numpy as np
import pytest

ov = pytest.importorskip("openvino", reason="the openvino extra is not installed")
torch = pytest.importorskip("torch", reason="the torch extra is not installed")

from edgeseg.runners.ov_rewrites import split_output_resizes  # noqa: E402

CLASSES = 5


class Head(torch.nn.Module):
    """A segmentation model's end: 1x1 classifier on a low-resolution map, upsample, crop (`after`: one more op
    after the resize, which makes it no longer the output's tail)."""

    def __init__(self, mode: str = "bilinear", align_corners: bool | None = False, scale: float | None = 4,
                 size: tuple[int, int] | None = None, crop: tuple[int | None, int | None] = (None, None),
                 after: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Conv2d(3, 16, 3, stride=4, padding=1)
        self.classifier = torch.nn.Conv2d(16, CLASSES, 1)
        self.mode, self.align_corners, self.scale, self.size, self.crop, self.after = (
            mode, align_corners, scale, size, crop, after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(torch.relu(self.features(x)))
        logits = torch.nn.functional.interpolate(logits, scale_factor=self.scale, size=self.size, mode=self.mode,
                                                 align_corners=self.align_corners)
        logits = logits[:, :, :self.crop[0], :self.crop[1]]
        return torch.relu(logits) if self.after else logits


def exported(tmp_path, head: Head, shape=(1, 3, 48, 64)):
    path = tmp_path / "head.onnx"
    torch.onnx.export(head.eval(), (torch.zeros(shape),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"])
    return path


def compiled(model):
    return ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})


def outputs(model, x):
    return compiled(model)({0: x})[0]


def full_size_reorders(model) -> int:
    """Reorder nodes OpenVINO inserted whose output is as large as the model's output."""
    runtime = compiled(model).get_runtime_model()
    full = int(np.prod(model.outputs[0].get_shape()))
    return sum(1 for op in runtime.get_ordered_ops()
               if op.get_rt_info()["layerType"].astype(str) == "Reorder"
               and int(np.prod(op.get_output_partial_shape(0).to_shape())) == full)


CASES = {
    # DeepLabV3+ in segmentation-models-pytorch: align_corners, the padding cropped off the bottom
    "align-corners-crop-h": Head(align_corners=True, crop=(44, None)),
    # SegFormer: half_pixel to a given size
    "half-pixel-size": Head(scale=None, size=(48, 64)),
    "half-pixel-odd-size": Head(scale=None, size=(37, 50)),
    "crop-w": Head(crop=(None, 60)),
    "crop-both": Head(align_corners=True, crop=(40, 62)),
    "nearest": Head(mode="nearest", align_corners=None, crop=(44, None)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_split_resize_computes_what_the_original_does(tmp_path, case):
    path = exported(tmp_path, CASES[case])
    original, rewritten = ov.Core().read_model(str(path)), ov.Core().read_model(str(path))
    assert len(split_output_resizes(rewritten)) == 1
    assert rewritten.outputs[0].get_names() == {"logits"}
    assert rewritten.outputs[0].get_shape() == original.outputs[0].get_shape()
    kinds = [op.get_type_name() for op in rewritten.get_ordered_ops()]
    if CASES[case].mode == "nearest":
        assert kinds.count("Interpolate") == 2  # one per axis
    else:
        assert kinds.count("Interpolate") == 1 and kinds.count("Gather") == 2  # W; H as two row gathers
    x = np.random.default_rng(0).normal(size=(1, 3, 48, 64)).astype(np.float32)
    expected = outputs(original, x)
    np.testing.assert_allclose(outputs(rewritten, x), expected, rtol=1e-5, atol=1e-5)
    # ... and what torch computes (the export itself is not what is tested, but it anchors both)
    with torch.no_grad():
        reference = CASES[case](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(expected, reference, rtol=1e-4, atol=1e-4)


def resize_only(mode: str, coordinate_mode: str, in_hw: tuple[int, int], scales=None, sizes=None, crop_h=None):
    """A bare ONNX Resize (+ an H crop) of a (1, 3, H, W) float input, as other exporters write it."""
    from onnx import TensorProto, helper, numpy_helper

    batch_channels = [1, 3]
    inputs = ["x", "", "scales" if scales else "", "sizes" if sizes else ""]
    initializers = []
    if scales:
        initializers.append(numpy_helper.from_array(np.array([1, 1, *scales], np.float32), "scales"))
        out_hw = [int(np.floor(length * scale)) for length, scale in zip(in_hw, scales)]
    else:
        initializers.append(numpy_helper.from_array(np.array([*batch_channels, *sizes], np.int64), "sizes"))
        out_hw = list(sizes)
    nodes = [helper.make_node("Resize", inputs, ["resized" if crop_h else "y"], mode=mode,
                              coordinate_transformation_mode=coordinate_mode)]
    if crop_h:
        initializers += [numpy_helper.from_array(np.array([value], np.int64), name)
                         for value, name in ((0, "start"), (crop_h, "stop"), (2, "axis"), (1, "step"))]
        nodes.append(helper.make_node("Slice", ["resized", "start", "stop", "axis", "step"], ["y"]))
        out_hw[0] = crop_h
    graph = helper.make_graph(nodes, "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                              [*batch_channels, *in_hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*batch_channels, *out_hw])],
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("coordinate_mode", ["half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners",
                                             "tf_half_pixel_for_nn"])
@pytest.mark.parametrize("resize, rows_resized", [
    (dict(scales=(2.5, 3.0)), True), (dict(sizes=(31, 47)), True), (dict(sizes=(7, 40)), True),
    (dict(scales=(4.0, 1.0), crop_h=40), True), (dict(sizes=(12, 50)), False)],
                         ids=["scales-fractional", "sizes-odd", "h-down-w-up", "h-only-cropped", "w-only"])
def test_bilinear_rows_match_openvino_for_every_coordinate_mode(coordinate_mode, resize, rows_resized):
    """The row gathers' interpolation weights are edgeseg's own: they must give what OpenVINO's linear_onnx
    Interpolate gives, for each ONNX coordinate mode, scales or sizes, up- and downsampling."""
    onnx_bytes = resize_only("linear", coordinate_mode, (12, 16), **resize)
    original, rewritten = (ov.Core().read_model(onnx_bytes, b"") for _ in range(2))
    assert len(split_output_resizes(rewritten)) == 1
    kinds = [op.get_type_name() for op in rewritten.get_ordered_ops()]
    assert kinds.count("Gather") == (2 if rows_resized else 0)
    x = np.random.default_rng(2).normal(size=(1, 3, 12, 16)).astype(np.float32)
    expected = outputs(original, x)
    assert outputs(rewritten, x).shape == expected.shape
    np.testing.assert_allclose(outputs(rewritten, x), expected, rtol=1e-5, atol=1e-5)


def test_the_full_size_reorder_is_gone(tmp_path):
    """What the split is for: OpenVINO no longer reorders the full-size logits from channels-last to NCHW."""
    path = exported(tmp_path, Head(align_corners=True, crop=(44, None)), shape=(1, 3, 96, 128))
    original, rewritten = ov.Core().read_model(str(path)), ov.Core().read_model(str(path))
    split_output_resizes(rewritten)
    assert full_size_reorders(original) >= 1
    assert full_size_reorders(rewritten) == 0


@pytest.mark.parametrize("head", [Head(after=True), Head(mode="bicubic", align_corners=False)],
                         ids=["not-the-output-tail", "bicubic"])
def test_look_alikes_are_left_alone(tmp_path, head):
    path = exported(tmp_path, head)
    model = ov.Core().read_model(str(path))
    before = [op.get_type_name() for op in model.get_ordered_ops()]
    assert split_output_resizes(model) == []
    assert [op.get_type_name() for op in model.get_ordered_ops()] == before


def test_a_quantized_resize_output_is_left_alone(tmp_path):
    """An INT8 graph that re-quantizes its upsampled logits keeps its form (the FakeQuantize would have to move
    to the full-size output, which costs what the split saves)."""
    import onnx
    from onnx import helper, numpy_helper

    path = exported(tmp_path, Head(align_corners=True))
    graph = onnx.load(str(path))
    resize = next(node for node in graph.graph.node if node.op_type == "Resize")
    resize.output[0] = "resized"
    graph.graph.initializer.extend([numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
                                    numpy_helper.from_array(np.array(128, np.uint8), "zero")])
    graph.graph.node.extend([helper.make_node("QuantizeLinear", ["resized", "scale", "zero"], ["q"]),
                             helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["logits"])])
    onnx.save(graph, str(path))
    assert split_output_resizes(ov.Core().read_model(str(path))) == []


def runnable_head(tmp_path):
    """The DeepLabV3+-like head (align_corners, bottom crop) with the preprocessing metadata edgeseg's runners need."""
    import onnx

    from edgeseg.zoo.contract import Preprocessing

    path = exported(tmp_path, Head(align_corners=True, crop=(44, None)))
    graph = onnx.load(str(path))
    entry = graph.metadata_props.add()
    entry.key = "edgeseg.preprocessing"
    entry.value = Preprocessing(input_size=(48, 64), classes=tuple("abcde"),
                                palette=tuple((index, index, index) for index in range(CLASSES))).to_json()
    onnx.save(graph, str(path))
    return path


def test_runner_rewrites_by_default_and_records_it(tmp_path):
    from edgeseg.runners.ov import OvRunner

    path = runnable_head(tmp_path)
    x = np.random.default_rng(1).normal(size=(1, 3, 48, 64)).astype(np.float32)
    with OvRunner(path, threads=1) as ours, OvRunner(path, threads=1, rewrite=False) as plain:
        assert ours.graph_rewrites == ["split-output-resize: /Resize"] and plain.graph_rewrites == []
        np.testing.assert_allclose(ours.infer(x), plain.infer(x), rtol=1e-5, atol=1e-5)


def test_a_variant_can_run_without_the_runner_rewrites_and_says_so(tmp_path):
    """The benchmark's ablation row: the bundle default with runner_rewrites=False opens an OvRunner that makes no
    rewrite, under a name of its own, and the flag survives report.json."""
    from edgeseg.cpu_variants import CpuVariant, open_variant

    path = runnable_head(tmp_path)
    ours = CpuVariant("ov-cpu", "fp32", path.name, hint="f32")
    ablation = CpuVariant("ov-cpu", "fp32", path.name, hint="f32", runner_rewrites=False)
    assert ablation.name == "ov-cpu/fp32 (no runner rewrites)" and ours.name == "ov-cpu/fp32"
    assert CpuVariant.from_dict(ablation.to_dict()) == ablation and CpuVariant.from_dict(ours.to_dict()) == ours
    assert open_variant(tmp_path, ours, threads=1).graph_rewrites == ["split-output-resize: /Resize"]
    assert open_variant(tmp_path, ablation, threads=1).graph_rewrites == []
