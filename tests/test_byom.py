"""Bring your own model: a segmentation ONNX exported by someone else (plain torch.onnx.export, no edgeseg
metadata) goes through card init, quantize, build (cpu and a Jetson kit), bench, demo and eval."""

from __future__ import annotations

import json
import re

import onnx
import pytest

from edgeseg.data.palettes import CAMVID
from tests.test_cli import assert_one_line_error, run_cli

SIZE = (180, 240)


@pytest.fixture(scope="module")
def lraspp_onnx(tmp_path_factory):
    """torchvision's LR-ASPP (random weights, 11 classes), exported the way its users do: no edgeseg anywhere."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                       num_classes=11).eval()
    path = tmp_path_factory.mktemp("foreign") / "lraspp.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, *SIZE),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"])
    return path


@pytest.fixture(scope="module")
def lraspp_card(lraspp_onnx, tmp_path_factory):
    """`edgeseg card init` plus the user's edits: CamVid's class names, colours and void value."""
    from edgeseg.cli import main

    card = lraspp_onnx.with_name("lraspp.card.toml")
    try:
        main(["card", "init", str(lraspp_onnx)])
    except SystemExit as exit_info:
        assert exit_info.code in (0, None)
    text = card.read_text()
    assert "input_size = [180, 240]" in text and "class_10" in text
    text = re.sub(r"^classes = .*$", "classes = " + json.dumps(list(CAMVID.classes)), text, flags=re.M)
    colours = json.dumps([list(c) for c in CAMVID.palette])
    text = text.replace("# colours = [[128, 64, 128], ...]", "colours = " + colours)
    text = re.sub(r"^ignore_index = 255", "ignore_index = 11", text, flags=re.M)
    card.write_text(text)
    return card


def metadata(path):
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def test_foreign_onnx_is_refused_without_a_card_in_one_line(lraspp_onnx, tmp_path, capsys):
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "frame.png"), np.zeros((120, 160, 3), np.uint8))
    for args in (["quantize", str(lraspp_onnx), "--calib-images", str(tmp_path)],
                 ["eval", "--model", str(lraspp_onnx), "--limit", "1"],
                 ["demo", "--model", str(lraspp_onnx), "--source", str(tmp_path), "--no-show"],
                 ["build", "--model", str(lraspp_onnx), "--out", str(tmp_path / "bundle")]):
        code, _, err = run_cli(args, capsys)
        assert_one_line_error(code, err, "--card")
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "bundle.partial").exists()


@pytest.mark.camvid
@pytest.mark.slow
def test_foreign_lraspp_through_every_stage(lraspp_onnx, lraspp_card, real_data, tmp_path, capsys):
    common = ["--data-root", str(real_data), "--calib-count", "8", "--calib-strategy", "random", "--threads", "1"]
    bundle = tmp_path / "cpu"
    code, out, err = run_cli(["build", "--model", str(lraspp_onnx), "--card", str(lraspp_card), "--target", "cpu",
                              "--out", str(bundle), "--budget-limit", "20", "--limit", "10", *common], capsys)
    assert code == 0, err
    manifest = json.loads((bundle / "manifest.json").read_text())
    budget = manifest["checks"]["int8_accuracy_budget"]
    assert budget["met"] and budget["drop_points"] <= 1.0 and budget["eval"] == "camvid/val"
    assert manifest["checks"]["parity"]["reference"].startswith("onnxruntime fp32")
    assert manifest["model_kind"] == "onnx" and manifest["card"]["classes"] == list(CAMVID.classes)
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):  # the card travels in every graph
        carried = json.loads(metadata(bundle / name)["edgeseg.preprocessing"])
        assert carried["classes"] == list(CAMVID.classes) and carried["input_size"] == list(SIZE)
    assert "edgeseg.preprocessing" not in metadata(lraspp_onnx)  # the user's file is left as it was
    report = json.loads((bundle / "report.json").read_text())
    assert set(report["precisions"]) == {"fp32", "fp16", "int8"}
    assert report["precisions"]["int8"]["size_mb"] < report["precisions"]["fp32"]["size_mb"] / 2

    kit = tmp_path / "orin"
    code, _, err = run_cli(["build", "--model", str(lraspp_onnx), "--card", str(lraspp_card), "--target",
                            "jetson-orin-nano", "--out", str(kit), "--max-miou-drop", "-1", "--limit", "2",
                            *common], capsys)
    assert code == 0, err
    plan = json.loads((kit / "plan.json").read_text())
    assert (kit / "build_engine.sh").is_file() and "model.int8.onnx" in json.dumps(plan)

    # eval: the foreign graph with its card, and the bundle's FP32 graph, are the same model
    scores = {}
    for name, args in (("card", ["--model", str(lraspp_onnx), "--card", str(lraspp_card)]),
                       ("bundle", ["--model", str(bundle / "model.onnx")])):
        out_json = tmp_path / f"{name}.json"
        code, _, err = run_cli(["eval", *args, "--data-root", str(real_data), "--split", "val", "--limit", "6",
                                "--json", str(out_json)], capsys)
        assert code == 0, err
        scores[name] = json.loads(out_json.read_text())
    assert scores["card"]["miou"] == scores["bundle"]["miou"] and scores["card"]["images"] == 6
    assert scores["card"]["input_size"] == list(SIZE)

    results = tmp_path / "bench"
    code, _, err = run_cli(["bench", "--models", str(lraspp_onnx), "--card", str(lraspp_card), "--precisions",
                            "fp32", "--backends", "ort-cpu", "--data-root", str(real_data), "--limit", "2",
                            "--min-seconds", "0.1", "--no-plots", "--threads", "1", "--out", str(results)], capsys)
    assert code == 0, err
    row = json.loads((results / "results.json").read_text())["rows"][0]
    assert row["status"] == "ok" and row["size"] == list(SIZE) and row["latency_ms"]["p50_ms"] > 0

    frames = tmp_path / "frames"
    frames.mkdir()
    for image in sorted((real_data / "CamVid" / "val").glob("*.png"))[:3]:
        (frames / image.name).symlink_to(image.resolve())  # EDGESEG_DATA may be relative (CI: ../shared/data)
    video = tmp_path / "demo.mp4"
    code, _, err = run_cli(["demo", "--model", str(lraspp_onnx), "--card", str(lraspp_card), "--source", str(frames),
                            "--save", str(video), "--no-show", "--threads", "1"], capsys)
    assert code == 0, err
    assert video.stat().st_size > 1000


@pytest.mark.slow
def test_foreign_quantize_from_a_plain_image_folder(lraspp_onnx, lraspp_card, tmp_path, capsys):
    """No labelled data: calibration from --calib-images; the INT8 graph carries the card; a build without labels
    says the budget was skipped and reports latency only."""
    from tests.conftest import write_noise_images

    images = write_noise_images(tmp_path / "images", 4, (120, 160, 3))
    out = tmp_path / "lraspp.int8.onnx"
    code, _, err = run_cli(["quantize", str(lraspp_onnx), "--card", str(lraspp_card), "--calib-images", str(images),
                            "--out", str(out)], capsys)
    assert code == 0, err
    assert json.loads(metadata(out)["edgeseg.preprocessing"])["classes"] == list(CAMVID.classes)
    assert json.loads(out.with_name(out.name + ".json").read_text())["calibration"]["count"] == 4

    bundle = tmp_path / "nolabels"
    code, out_text, err = run_cli(["build", "--model", str(lraspp_onnx), "--card", str(lraspp_card), "--calib-images",
                                   str(images), "--calib-count", "4", "--data-root", str(tmp_path / "nothing"),
                                   "--out", str(bundle), "--threads", "1"], capsys)
    assert code == 0, err
    assert "edgeseg: warning: accuracy budget skipped: no labelled data" in err and "bundle ready in" in out_text
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "skipped" in manifest["checks"]["int8_accuracy_budget"]
    report = json.loads((bundle / "report.json").read_text())
    assert report["precisions"]["int8"]["miou"] is None and report["precisions"]["int8"]["latency_p50_ms"] > 0
