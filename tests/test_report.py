"""edgeseg/report.py: a bundle's per-precision accuracy and latency, measured with ONNX Runtime on hand-made
models and masks whose scores are worked out by hand, and the report files written from them."""

import json

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.bench.latency import SIDE_BY_SIDE_METHOD
from edgeseg.data.palettes import CAMVID
from edgeseg.report import measure_precisions, write_reports
from edgeseg.zoo.contract import Preprocessing
from tests.log_lines import captured

SKY, ROAD, VOID = 0, 3, 11
SIZE = (8, 8)


def constant_model(path, label: int):
    """A 1x1 Conv with zero weights and a one-hot bias: logits that pick `label` at every pixel, with edgeseg's
    metadata so the ONNX Runtime runner takes it like an export."""
    classes = len(CAMVID.classes)
    bias = np.zeros(classes, np.float32)
    bias[label] = 1.0
    graph = helper.make_graph(
        [helper.make_node("Conv", ["pixel_values", "weight", "bias"], ["logits"])], "constant",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, *SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes, *SIZE])],
        [numpy_helper.from_array(np.zeros((classes, 3, 1, 1), np.float32), "weight"),
         numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    preprocessing = Preprocessing(input_size=SIZE, classes=CAMVID.classes, palette=CAMVID.palette)
    for key, value in (("edgeseg.preprocessing", preprocessing.to_json()), ("edgeseg.output", "logits")):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def two_frames(tmp_path):
    """CamVid's test split as two 8x8 frames: sky over road (32 + 32 pixels), and road under a void row (56 + 8)."""
    first = np.full(SIZE, ROAD, np.uint8)
    first[:4] = SKY
    second = np.full(SIZE, ROAD, np.uint8)
    second[0] = VOID
    for folder in ("test", "testannot"):
        (tmp_path / "CamVid" / folder).mkdir(parents=True)
    for index, mask in enumerate((first, second)):
        name = f"Seq01_test{index:04d}.png"
        cv2.imwrite(str(tmp_path / "CamVid" / "test" / name), np.full((*SIZE, 3), 100, np.uint8))
        cv2.imwrite(str(tmp_path / "CamVid" / "testannot" / name), mask)
    return tmp_path


def test_measure_precisions_scores_each_model_and_compares_with_fp32(tmp_path, two_frames):
    paths = {"fp32": constant_model(tmp_path / "road.onnx", ROAD), "int8": constant_model(tmp_path / "sky.onnx", SKY)}
    with captured("edgeseg.report") as said:
        measured = measure_precisions(paths, "camvid", "test", two_frames, limit=None, threads=1, latency_rounds=2)
    lines = said.lines
    assert measured["images"] == 2 and measured["dataset"] == "camvid/test" and measured["threads"] == 1
    assert measured["latency_method"] == SIDE_BY_SIDE_METHOD  # what was done: shuffled_rounds() each round
    fp32, int8 = measured["precisions"]["fp32"], measured["precisions"]["int8"]
    # 120 labelled pixels: 32 sky, 88 road. All-road: road IoU 88/120, sky 0; the 9 absent classes have no IoU.
    assert fp32["miou"] == pytest.approx(88 / 120 / 2) and fp32["pixel_accuracy"] == pytest.approx(88 / 120)
    assert fp32["per_class_iou"]["Road"] == pytest.approx(88 / 120) and fp32["per_class_iou"]["Sky"] == 0.0
    assert fp32["per_class_iou"]["Car"] is None
    # All-sky: sky IoU 32/120, road 0.
    assert int8["miou"] == pytest.approx(32 / 120 / 2) and int8["pixel_accuracy"] == pytest.approx(32 / 120)
    assert fp32["miou_drop"] == 0.0 and int8["miou_drop"] == pytest.approx((88 - 32) / 240 * 100)
    assert fp32["size_mb"] == (tmp_path / "road.onnx").stat().st_size / 1e6
    assert fp32["latency_ratio"] == 1.0 and fp32["latency_p50_ms"] == fp32["latency"]["p50_ms"] > 0
    assert int8["latency_ratio"] == pytest.approx(int8["latency_p50_ms"] / fp32["latency_p50_ms"])
    assert int8["latency"]["runs"] == 2 * 2  # rounds x 2 per round
    assert lines[0] == "fp32: mIoU 0.3667 on camvid/test (2 images)"
    assert lines[1] == "int8: mIoU 0.1333 on camvid/test (2 images)"
    assert "mIoU drop +23.33 points on camvid/test" in lines[3]  # the INT8 result line names its split
    # The first frame alone: road IoU 32/64.
    first = measure_precisions({"fp32": paths["fp32"]}, "camvid", "test", two_frames, limit=1, threads=1,
                               latency_rounds=1)
    assert first["images"] == 1 and first["precisions"]["fp32"]["miou"] == pytest.approx(0.25)


def test_reports_hold_every_precision_and_say_what_stayed_float(tmp_path):
    measured = {"dataset": "camvid/test", "images": 233, "backend": "ort-cpu", "threads": 2,
                "latency_method": SIDE_BY_SIDE_METHOD,
                "precisions": {"fp32": {"miou": 0.4384, "miou_drop": 0.0, "latency_p50_ms": 89.11,
                                        "latency_ratio": 1.0, "size_mb": 15.06},
                               "int8": {"miou": 0.4377, "miou_drop": 0.07, "latency_p50_ms": 55.35,
                                        "latency_ratio": 0.6211, "size_mb": 4.74}}}
    manifest = {"layers_kept_float": ["/decode_head/classifier/Conv"], "checks": {"parity": {"passed": True}},
                "engine": {"reason": "no TensorRT on this host"}}
    write_reports(tmp_path, "segformer-b0", "cpu", measured, manifest)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["model"] == "segformer-b0" and report["target"] == "cpu"
    assert report["eval"] == {"dataset": "camvid/test", "images": 233} and report["threads"] == 2
    assert report["precisions"] == measured["precisions"] and report["parity"] == {"passed": True}
    assert report["layers_kept_float"] == ["/decode_head/classifier/Conv"]
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert lines[0] == "# segformer-b0 for cpu"
    assert lines[2] == ("Accuracy on camvid/test (233 images); latency on ONNX Runtime CPU, interleaved rounds in a "
                        "new seeded random order each, batch 1, model only, measured side by side in one run.")
    assert "| fp32 | 0.4384 | +0.00 | 89.1 | 1.00x | 15.1 |" in lines
    assert "| int8 | 0.4377 | +0.07 | 55.4 | 0.62x | 4.7 |" in lines
    assert "INT8 layers kept in float: /decode_head/classifier/Conv." in lines
    assert lines[-1] == "Engine: not built here (no TensorRT on this host)."
    write_reports(tmp_path, "segformer-b0", "jetson-orin", measured,
                  {"checks": {}, "engine": {"engine": "model.int8.engine"}})
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert "INT8 layers kept in float: none." in lines and lines[-1] == "TensorRT engine: model.int8.engine."
    assert json.loads((tmp_path / "report.json").read_text())["parity"] is None
