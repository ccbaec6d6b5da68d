"""Export, FP16, calibration sets and INT8 on small generated data: real ONNX Runtime, real files."""

import json
import warnings

import cv2
import numpy as np
import onnx
import pytest
import torch

from edgeseg.calibration import CalibConfig, load_calibration_set, make_calibration_set
from edgeseg.errors import DataError, UsageError
from edgeseg.export import ExportConfig, ExportError, export_model, onnx_preprocessing
from edgeseg.quantize import QuantizeConfig, convert_fp16, quantize_int8
from edgeseg.runners import open_runner
from edgeseg.zoo.weights import LoadedModel, load_model

from tests.log_lines import captured

SIZE = (48, 64)


@pytest.fixture()
def exported(tmp_path, tiny_camvid):
    torch.manual_seed(0)
    loaded = load_model("fcn-resnet18", "random")
    artifact = export_model(loaded, "fcn-resnet18", ExportConfig(size=SIZE, data_root=str(tiny_camvid),
                                                                 parity_images=2), tmp_path / "model.onnx")
    return artifact, tiny_camvid


def test_export_writes_metadata_manifest_and_parity(exported):
    artifact, _ = exported
    preprocessing = onnx_preprocessing(artifact.path)
    assert preprocessing.input_size == SIZE and preprocessing.classes[0] == "Sky"
    manifest = json.loads(artifact.manifest_path.read_text())
    parity = manifest["checks"]["parity"]
    assert parity["passed"] and parity["argmax_agreement"] >= 0.999
    assert parity["source"].startswith("camvid/val")
    assert manifest["artifact"]["sha256"] and manifest["versions"]["onnxruntime"]
    graph = onnx.load(str(artifact.path))
    assert graph.opset_import[0].version >= 17
    with open_runner(artifact.path, device="cpu") as runner:
        assert runner.output_kind == "logits"
        out = runner.infer(np.zeros((1, 3, *SIZE), np.float32))
    assert out.shape == (1, 11, *SIZE)


def test_fused_argmax_and_dynamic_axes(tmp_path, tiny_camvid):
    loaded = load_model("fcn-resnet18", "random")
    artifact = export_model(loaded, "fcn-resnet18",
                            ExportConfig(size=SIZE, fuse_argmax=True, dynamic=("batch", "height", "width"),
                                         data_root=str(tiny_camvid), parity_images=2), tmp_path / "fused.onnx")
    with open_runner(artifact.path, device="cpu") as runner:
        labels = runner.infer(np.zeros((2, 3, 64, 96), np.float32))
    assert runner.output_kind == "labels"
    assert labels.shape == (2, 64, 96) and labels.dtype == np.uint8


def test_layernorm_stays_one_op_and_fp32_in_fp16_graph(tmp_path, tiny_camvid):
    loaded = load_model("segformer-b0", "random")
    fp32 = export_model(loaded, "segformer-b0", ExportConfig(size=(64, 64), data_root=str(tiny_camvid),
                                                             parity_images=1), tmp_path / "sf.onnx")
    assert any(node.op_type == "LayerNormalization" for node in onnx.load(str(fp32.path)).graph.node)
    fp16 = convert_fp16(fp32.path, tmp_path / "sf.fp16.onnx")
    graph = onnx.load(str(fp16.path))
    # Every LayerNormalization reads FP32 (a Cast to float feeds it), so FP16 cannot overflow its variance.
    types = {init.name: init.data_type for init in graph.graph.initializer}
    for node in graph.graph.node:
        if node.op_type == "LayerNormalization":
            assert types.get(node.input[1], onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.graph.initializer)
    with open_runner(fp16.path, device="cpu") as runner:
        fp16_out = runner.infer(np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32))
    assert np.isfinite(fp16_out).all()


def test_failed_export_is_a_clear_error_and_writes_nothing(tmp_path):
    class NotExportable(torch.nn.Module):
        def forward(self, pixel_values):
            return torch.linalg.eigvals(pixel_values[0, 0, :8, :8]).real.reshape(1, 1, 8, 1).expand(1, 11, 8, 8)

    loaded = LoadedModel(NotExportable(), load_model("fcn-resnet18", "random").preprocessing.with_size((8, 8)),
                         "random")
    with pytest.raises(ExportError, match="ONNX export of broken failed"):
        export_model(loaded, "broken", ExportConfig(parity_images=1), tmp_path / "broken.onnx")
    assert not (tmp_path / "broken.onnx").exists()


def test_unwritable_output_directory(tmp_path, tiny_camvid):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UsageError, match="cannot create output directory"):
        export_model(load_model("fcn-resnet18", "random"), "fcn-resnet18",
                     ExportConfig(size=SIZE, data_root=str(tiny_camvid), parity_images=1), blocker / "m.onnx")


def test_calibration_strategies_and_manifest(tmp_path):
    from tests.conftest import make_camvid

    data = make_camvid(tmp_path / "data", per_split=12)
    preprocessing = load_model("fcn-resnet18", "random").preprocessing.with_size(SIZE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        balanced = make_calibration_set(preprocessing, CalibConfig(data_root=str(data), count=6), tmp_path / "c.json")
    assert any("only 6 calibration images" in str(w.message) for w in caught)
    assert balanced.manifest["count"] == 6 and balanced.manifest["class_coverage"]["Car"] > 0
    assert all(not entry["path"].startswith("/") for entry in balanced.manifest["images"])
    again = make_calibration_set(preprocessing, CalibConfig(data_root=str(data), count=6), tmp_path / "d.json")
    assert again.manifest["images"] == balanced.manifest["images"]  # seeded: reproducible
    spread = make_calibration_set(preprocessing, CalibConfig(data_root=str(data), count=4,
                                                             strategy="sequence-spread"), tmp_path / "e.json")
    assert spread.manifest["count"] == 4
    manifest, paths = load_calibration_set(tmp_path / "c.json", data)
    assert len(paths) == 6
    # An image that changed after the manifest was written is refused.
    cv2.imwrite(str(paths[0]), np.zeros((*SIZE, 3), np.uint8))
    with pytest.raises(DataError, match="changed since .* was written"):
        load_calibration_set(tmp_path / "c.json", data)


def test_calibration_folder_errors(tmp_path):
    preprocessing = load_model("fcn-resnet18", "random").preprocessing
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="has no images"):
        make_calibration_set(preprocessing, CalibConfig(images_dir=str(empty), count=1, strategy="random"),
                             tmp_path / "c.json")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    cv2.imwrite(str(mixed / "a.png"), np.zeros((48, 64, 3), np.uint8))
    cv2.imwrite(str(mixed / "b.png"), np.zeros((96, 128, 3), np.uint8))
    with pytest.raises(DataError, match="mixed sizes"):
        make_calibration_set(preprocessing, CalibConfig(images_dir=str(mixed), count=2, strategy="random"),
                             tmp_path / "c.json")
    (mixed / "b.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="b.png cannot be read"):
        make_calibration_set(preprocessing, CalibConfig(images_dir=str(mixed), count=2, strategy="random"),
                             tmp_path / "c.json")
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("profile", ["cpu", "trt"])
def test_int8_graph_has_qdq_and_agrees_with_fp32(exported, tmp_path, profile):
    artifact, data = exported
    preprocessing = onnx_preprocessing(artifact.path)
    calibration = make_calibration_set(preprocessing, CalibConfig(data_root=str(data), count=4, strategy="random"),
                                       tmp_path / "calib.json")
    int8 = quantize_int8(artifact.path, calibration.path, QuantizeConfig(profile=profile, data_root=str(data)),
                         tmp_path / f"model.{profile}.int8.onnx")
    graph = onnx.load(str(int8.path))
    ops = {node.op_type for node in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    scales_zero_points = [init for init in graph.graph.initializer if init.name.endswith("_zero_point")]
    if profile == "trt":  # symmetric: every zero point is 0 and int8
        assert all(onnx.numpy_helper.to_array(zp).dtype == np.int8 and not onnx.numpy_helper.to_array(zp).any()
                   for zp in scales_zero_points)
    manifest = json.loads(int8.manifest_path.read_text())
    assert manifest["precision"] == "int8" and manifest["inputs"]["calibration"]["sha256"]
    # The logits' final upsample is left in float, on both profiles (cpu: named in the manifest; trt quantizes
    # only weighted layers): the output comes from the Resize, not re-quantized after it.
    producer = next(node for node in graph.graph.node if graph.graph.output[0].name in node.output)
    assert producer.op_type == "Resize", producer.op_type
    assert manifest["settings"]["float_logits_tail"] == ([] if profile == "trt" else [producer.name])
    image = np.random.default_rng(0).normal(size=(1, 3, *SIZE)).astype(np.float32)
    with open_runner(artifact.path, device="cpu") as fp32_runner, open_runner(int8.path, device="cpu") as int8_runner:
        reference, quantized = fp32_runner.infer(image), int8_runner.infer(image)
    correlation = np.corrcoef(reference.ravel(), quantized.ravel())[0, 1]
    assert correlation > 0.95


def test_accuracy_budget_rescues_a_bad_calibration_or_fails_clearly(toy_checkpoint, tmp_path):
    """Calibrating on black frames saturates INT8; the budget loop must find the layers to keep in float."""
    from edgeseg.quantize import QuantizeError

    data, checkpoint = toy_checkpoint
    fp32 = export_model(load_model("fcn-resnet18", str(checkpoint)), "fcn-resnet18",
                        ExportConfig(size=SIZE, data_root=str(data), parity_images=2), tmp_path / "model.onnx")
    black = tmp_path / "black"
    black.mkdir()
    for index in range(4):
        cv2.imwrite(str(black / f"{index}.png"), np.zeros((*SIZE, 3), np.uint8))
    calibration = make_calibration_set(onnx_preprocessing(fp32.path),
                                       CalibConfig(images_dir=str(black), count=4, strategy="random"),
                                       tmp_path / "black.json")
    with pytest.raises(QuantizeError, match="still exceeds --max-miou-drop 0.0 with 1 layers in float"):
        quantize_int8(fp32.path, calibration.path,
                      QuantizeConfig(max_miou_drop=0.0, data_root=str(data), max_fallback_rounds=1),
                      tmp_path / "never.onnx")
    assert not (tmp_path / "never.onnx").exists()
    with captured("edgeseg.quantize") as said:
        rescued = quantize_int8(fp32.path, calibration.path,
                                QuantizeConfig(max_miou_drop=1.0, data_root=str(data), max_fallback_rounds=8),
                                tmp_path / "rescued.onnx")
    lines = said.lines
    accuracy = rescued.manifest["checks"]["accuracy"]
    # Every result line of the budget loop names the split it was measured on.
    budget_lines = [line for line in lines if "INT8 mIoU" in line]
    assert len(budget_lines) == len(accuracy["rounds"]) and all(" on camvid/val" in line for line in budget_lines)
    assert accuracy["rounds"][0]["drop"] > 1.0  # black-frame calibration really broke INT8
    assert accuracy["met"] and accuracy["drop_points"] <= 1.0
    assert rescued.manifest["layers_kept_float"] == accuracy["kept_float"] and accuracy["kept_float"]
    kept_counts = [r["kept_float"] for r in accuracy["rounds"]]
    assert kept_counts == sorted(kept_counts) and kept_counts[-1] > 0
    graph_nodes = {node.name: node for node in onnx.load(str(rescued.path)).graph.node}
    quantized_inputs = {out for node in onnx.load(str(rescued.path)).graph.node if node.op_type == "DequantizeLinear"
                        for out in node.output}
    kept_convs = [graph_nodes[name] for name in accuracy["kept_float"]
                  if name in graph_nodes and graph_nodes[name].op_type == "Conv"]
    for node in kept_convs:  # a kept convolution computes with float weights
        assert node.input[1] not in quantized_inputs, node.name


def test_sensitivity_ranking_names_quantized_layers(exported, tmp_path):
    from edgeseg.quant_sensitivity import rank_sensitivity

    artifact, data = exported
    preprocessing = onnx_preprocessing(artifact.path)
    calibration = make_calibration_set(preprocessing, CalibConfig(data_root=str(data), count=4, strategy="random"),
                                       tmp_path / "calib.json")
    int8 = quantize_int8(artifact.path, calibration.path, QuantizeConfig(data_root=str(data)),
                         tmp_path / "m.int8.onnx")
    _, paths = load_calibration_set(calibration.path, data)
    ranking = rank_sensitivity(artifact.path, int8.path, paths[:2], preprocessing, "pixel_values")
    conv_names = {n.name for n in onnx.load(str(artifact.path)).graph.node if n.op_type == "Conv"}
    assert ranking and conv_names & {name for name, _ in ranking}
    errors = [error for _, error in ranking]
    assert errors == sorted(errors, reverse=True)


def test_corrupt_onnx_is_refused(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage that is not a protobuf")
    with pytest.raises(UsageError, match="not a valid ONNX file|cannot be loaded"):
        convert_fp16(broken, tmp_path / "out.onnx")
    with pytest.raises(UsageError, match="cannot be loaded by ONNX Runtime"):
        open_runner(broken, device="cpu")


def test_cli_quantize_says_the_budget_on_stderr_and_nothing_under_quiet(exported, tmp_path, capsys):
    """The budget's result line is progress (stderr, gone under -q); stdout has the result alone."""
    from tests.test_cli import run_cli

    artifact, data = exported
    calibration = make_calibration_set(onnx_preprocessing(artifact.path),
                                       CalibConfig(data_root=str(data), count=4, strategy="random"),
                                       tmp_path / "calib.json")
    common = ["quantize", str(artifact.path), "--calibration", str(calibration.path), "--max-miou-drop", "100",
              "--data-root", str(data), "--budget-limit", "2", "--threads", "1"]
    code, out, err = run_cli([*common, "--out", str(tmp_path / "said.onnx")], capsys)
    assert code == 0, err
    budget = [line for line in err.splitlines() if "INT8 mIoU" in line]
    assert len(budget) == 1 and budget[0].startswith("INT8 mIoU ") and " on camvid/val (first 2 images): " in budget[0]
    assert out.splitlines() == [f"wrote {tmp_path / 'said.onnx'}; layers kept in float: none"]
    code, out, err = run_cli(["-q", *common, "--out", str(tmp_path / "quiet.onnx")], capsys)
    assert code == 0, err
    assert "INT8 mIoU" not in err and "INT8 calibration" not in err
    assert out.splitlines() == [f"wrote {tmp_path / 'quiet.onnx'}; layers kept in float: none"]
