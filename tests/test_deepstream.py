"""The DeepStream nvinfer config of GPU-target bundles (edgeseg.engine.deepstream): fields from the contract,
the one-scale normalisation checked on a pixel both ways, and the Softmax ONNX run with ONNX Runtime."""

from __future__ import annotations

import configparser

import numpy as np
import onnxruntime as ort
import pytest

from edgeseg.engine.bundle import finish_for_target
from edgeseg.engine.deepstream import nvinfer_scaling, render_nvinfer_config, sample_pipeline
from edgeseg.errors import UsageError
from edgeseg.target_registry import load_target
from edgeseg.zoo.contract import Preprocessing
from tests.engine_helpers import PREPROCESSING, make_bundle

CAMVID = Preprocessing(input_size=(360, 480), classes=tuple(f"class{i}" for i in range(12)))


def parse_config(text: str) -> dict[str, str]:
    parser = configparser.ConfigParser(comment_prefixes=("#",))
    parser.read_string(text)
    return dict(parser["property"])


def test_fields_come_from_the_contract():
    config = parse_config(render_nvinfer_config(CAMVID, "fp16", "segformer-b0"))
    assert config["network-type"] == "2" and config["num-detected-classes"] == "12"
    assert config["infer-dims"] == "3;360;480" and config["model-color-format"] == "0"  # RGB
    assert config["network-mode"] == "2" and config["onnx-file"] == "model.fp16.deepstream.onnx"
    assert config["model-engine-file"] == "model.fp16.deepstream.onnx_b1_gpu0_fp16.engine"
    assert config["segmentation-threshold"] == "0.0" and config["output-blob-names"] == "probabilities"
    assert config["labelfile-path"] == "labels.txt" and config["maintain-aspect-ratio"] == "0"
    assert not any(value.startswith("/") for value in config.values())  # relative to the bundle
    bgr = parse_config(render_nvinfer_config(Preprocessing(input_size=(64, 96), channel_order="BGR",
                                                           classes=("a", "b")), "fp32"))
    assert bgr["model-color-format"] == "1" and bgr["network-mode"] == "0" and bgr["infer-dims"] == "3;64;96"


def test_int8_bundles_run_the_fp16_model_in_deepstream_and_say_so():
    text = render_nvinfer_config(CAMVID, "int8")
    config = parse_config(text)
    assert config["network-mode"] == "2" and config["onnx-file"] == "model.fp16.deepstream.onnx"
    assert "falls back to FP16" in text


def test_one_pixel_both_ways():
    """DeepStream: y = net-scale-factor * (x - offset[c]); edgeseg: (x/255 - mean[c]) / std[c]."""
    config = parse_config(render_nvinfer_config(CAMVID, "fp16"))
    scale = float(config["net-scale-factor"])
    offsets = [float(value) for value in config["offsets"].split(";")]
    rgb = np.array([[[200, 100, 50]]], np.uint8)
    edgeseg = CAMVID.normalize(rgb)[0, :, 0, 0]
    deepstream = np.array([scale * (x - offset) for x, offset in zip(rgb[0, 0].astype(float), offsets)])
    # offsets are exact: a pixel at the mean is 0 both ways
    assert offsets == pytest.approx([255 * m for m in CAMVID.mean], abs=1e-3)
    # the one scale is the mean std: per channel, DeepStream's value is edgeseg's times std[c] / mean(std)
    factors = np.array(CAMVID.std) / np.mean(CAMVID.std)
    assert deepstream == pytest.approx(edgeseg * factors, rel=1e-5)
    relative = np.abs(deepstream / edgeseg - 1)
    assert relative.max() == pytest.approx(nvinfer_scaling(CAMVID).max_relative_error, rel=1e-4)
    assert 0.013 < relative.max() < 0.0135  # ImageNet's std: 0.229 vs 0.226, 1.33 %
    assert "at most 1.33% off" in render_nvinfer_config(CAMVID, "fp16")


def test_equal_std_is_exact():
    same = Preprocessing(input_size=(8, 8), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), classes=("a",))
    scaling = nvinfer_scaling(same)
    assert scaling.max_relative_error == 0 and scaling.net_scale_factor == pytest.approx(1 / 127.5)
    pixel = np.array([[[10, 128, 250]]], np.uint8)
    expected = same.normalize(pixel)[0, :, 0, 0]
    assert [scaling.net_scale_factor * (x - o) for x, o in zip([10, 128, 250], scaling.offsets)] == \
        pytest.approx(list(expected), abs=1e-6)


def test_no_classes_is_refused():
    with pytest.raises(UsageError, match="num-detected-classes"):
        render_nvinfer_config(Preprocessing(input_size=(8, 8)), "fp16")


def test_gpu_bundles_carry_the_config_and_a_softmax_model(tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    result = finish_for_target(bundle, load_target("rtx-4090"), "fp16")
    assert result.deepstream["config"] == "nvinfer_config.txt"
    config = parse_config((bundle / "nvinfer_config.txt").read_text())
    assert (bundle / config["onnx-file"]).is_file() and (bundle / config["labelfile-path"]).read_text() == "a\nb\n"
    assert config["num-detected-classes"] == "2" and config["infer-dims"] == "3;32;32"
    readme = (bundle / "README.md").read_text()
    assert "## DeepStream" in readme and sample_pipeline(PREPROCESSING) in readme

    image = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
    logits = ort.InferenceSession(str(bundle / "model.fp16.onnx")).run(None, {"pixel_values": image})[0]
    session = ort.InferenceSession(str(bundle / config["onnx-file"]))
    assert [output.name for output in session.get_outputs()] == ["probabilities"]
    probabilities = session.run(None, {"pixel_values": image})[0]
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5) and probabilities.min() >= 0
    assert (probabilities.argmax(axis=1) == logits.argmax(axis=1)).all()
