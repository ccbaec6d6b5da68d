"""Your own PyTorch model: a local Hugging Face SegFormer directory (19 Cityscapes classes) on Cityscapes as
downloaded, and a user nn.Module given as module:factory with --weights, both through export and build."""

from __future__ import annotations

import json

import pytest

from edgeseg.data.palettes import CAMVID, CITYSCAPES
from tests.test_byom_data import make_cityscapes
from tests.test_cli import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def segformer_dir(tmp_path_factory):
    """A small SegFormer in the Hugging Face format (config.json + model.safetensors), random weights."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    config = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[4, 2], hidden_sizes=[16, 32],
                             patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                             decoder_hidden_size=32, num_labels=19,
                             id2label={i: name for i, name in enumerate(CITYSCAPES.classes)},
                             label2id={name: i for i, name in enumerate(CITYSCAPES.classes)})
    directory = tmp_path_factory.mktemp("hf") / "my-segformer"
    SegformerForSemanticSegmentation(config).save_pretrained(str(directory))
    return directory


@pytest.mark.slow
def test_local_hf_segformer_builds_end_to_end_on_cityscapes_as_downloaded(segformer_dir, tmp_path, capsys):
    data = make_cityscapes(tmp_path / "downloads" / "cs", per_split=4)
    code, out, err = run_cli(["card", "show", str(segformer_dir)], capsys)
    assert code == 0, err
    assert '"traffic light"' in out and "input_size = [512, 512]" in out  # no preprocessor_config: the default

    bundle = tmp_path / "bundle"
    code, out, err = run_cli(["build", "--model", str(segformer_dir), "--data", f"cityscapes:{data}", "--size",
                              "64x128", "--calib-count", "4", "--calib-strategy", "random", "--split", "val",
                              "--max-miou-drop", "5", "--threads", "1", "--out", str(bundle)], capsys)
    assert code == 0, err
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model_kind"] == "hf" and manifest["checks"]["parity"]["passed"]
    assert manifest["checks"]["int8_accuracy_budget"]["eval"] == f"cityscapes:{data}/val"
    report = json.loads((bundle / "report.json").read_text())
    assert report["eval"]["dataset"] == "cityscapes/val" and report["eval"]["images"] == 4
    assert set(report["precisions"]["fp32"]["per_class_iou"]) == set(CITYSCAPES.classes)
    calibration = json.loads((bundle / "calibration.json").read_text())
    assert calibration["count"] == 4 and all("leftImg8bit/train" in i["path"] for i in calibration["images"])
    export = json.loads((bundle / "model.onnx.json").read_text())
    assert export["checks"]["parity"]["source"].startswith("cityscapes/val")

    out_json = tmp_path / "eval.json"
    code, _, err = run_cli(["eval", "--model", str(bundle), "--data", f"cityscapes:{data}", "--split", "val",
                            "--json", str(out_json)], capsys)
    assert code == 0, err
    # A bundle runs its default CPU variant (the fastest within the budget): eval scores what the report chose.
    assert json.loads(out_json.read_text())["miou"] == pytest.approx(report["default"]["miou"])


USER_MODULE = '''
import torch
from torch import nn


class TinySeg(nn.Module):
    """A user's own network: returns a dict like torchvision's models, at half resolution."""

    def __init__(self, num_classes=11):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(16, num_classes, 1)

    def forward(self, x):
        return {"out": self.head(self.body(x))}


def build():
    return TinySeg()
'''


@pytest.fixture()
def user_model(tmp_path, monkeypatch):
    """userseg.py in the working directory, its weights as safetensors, and a card."""
    import torch
    from safetensors.torch import save_file

    (tmp_path / "userseg.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("userseg")
    torch.manual_seed(0)
    save_file(module.build().state_dict(), str(tmp_path / "tiny.safetensors"))
    card = tmp_path / "tiny.card.toml"
    card.write_text(f"name = \"tinyseg\"\nclasses = {json.dumps(list(CAMVID.classes))}\nignore_index = 11\n"
                    "input_size = [48, 64]\n")
    yield tmp_path, card
    import sys

    sys.modules.pop("userseg", None)


@pytest.mark.slow
def test_user_module_factory_through_export_and_build(user_model, tiny_camvid, capsys):
    folder, card = user_model
    code, out, err = run_cli(["export", "--model", "userseg:build", "--weights", "tiny.safetensors", "--card",
                              str(card), "--data-root", str(tiny_camvid), "--out", "tiny.onnx"], capsys)
    assert code == 0, err
    manifest = json.loads((folder / "tiny.onnx.json").read_text())
    assert manifest["checks"]["parity"]["passed"] and manifest["checks"]["parity"]["source"].startswith("camvid")
    assert manifest["preprocessing"]["input_size"] == [48, 64]

    code, out, err = run_cli(["build", "--model", "userseg:build", "--weights", "tiny.safetensors", "--card",
                              str(card), "--data-root", str(tiny_camvid), "--calib-count", "4", "--calib-strategy",
                              "random", "--max-miou-drop", "-1", "--threads", "1", "--out", "bundle"], capsys)
    assert code == 0, err
    manifest = json.loads((folder / "bundle" / "manifest.json").read_text())
    assert manifest["model"] == "build" and manifest["model_kind"] == "factory"
    assert manifest["inputs"]["weights"]["path"].endswith("tiny.safetensors")
    report = json.loads((folder / "bundle" / "report.json").read_text())
    assert report["precisions"]["int8"]["miou"] is not None


def test_user_module_bad_weights_are_one_line(user_model, capsys):
    import torch

    folder, card = user_model
    from userseg import TinySeg

    torch.save(TinySeg(), folder / "pickled.pt")  # a whole pickled module: refused, never unpickled
    torch.save(TinySeg(num_classes=5).state_dict(), folder / "five.pt")
    for weights, message in (("pickled.pt", "not loaded for safety"), ("five.pt", "does not fit userseg:build()"),
                             ("missing.pt", "do not exist")):
        code, _, err = run_cli(["export", "--model", "userseg:build", "--weights", weights, "--card", str(card)],
                               capsys)
        assert_one_line_error(code, err, message)
    code, _, err = run_cli(["export", "--model", "userseg:build", "--weights", "five.pt"], capsys)
    assert_one_line_error(code, err, "--card")
    code, _, err = run_cli(["export", "--model", "nosuchmodule:build", "--weights", "five.pt", "--card", str(card)],
                           capsys)
    assert_one_line_error(code, err, "cannot import nosuchmodule")


def test_mask2former_style_checkpoint_is_refused_with_the_reason(tmp_path, capsys):
    """Mask2Former predicts masks + classes, not per-pixel logits: not an AutoModelForSemanticSegmentation."""
    from transformers import Mask2FormerConfig

    Mask2FormerConfig().save_pretrained(str(tmp_path / "m2f"))
    code, _, err = run_cli(["export", "--model", str(tmp_path / "m2f"), "--out", str(tmp_path / "x.onnx")], capsys)
    assert_one_line_error(code, err, "(mask2former) is not loadable as AutoModelForSemanticSegmentation")
    assert not (tmp_path / "x.onnx").exists()
