"""Every architecture the installed transformers loads as AutoModelForSemanticSegmentation, through edgeseg as a
local Hugging Face directory: `card show`, `export`, `eval` and `build --target cpu`. Each model is a tiny config
with random weights written with save_pretrained (nothing is downloaded), 11 CamVid classes, 64x64 generated
scenes. An architecture that cannot work is refused in one line naming it (README "Your own model" has the table).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeseg.data.palettes import CAMVID
from tests.conftest import make_camvid
from tests.test_cli import assert_one_line_error, run_cli

transformers = pytest.importorskip("transformers")

SIDE = 64  # every config's image_size and the preprocessor size: ViT position grids fit it as they are
VIT = dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=SIDE,
           patch_size=8)  # four layers: BEiT-style heads and DPT's neck take four feature maps


def _labels() -> dict:
    return dict(num_labels=len(CAMVID.classes), id2label=dict(enumerate(CAMVID.classes)),
                label2id={name: i for i, name in enumerate(CAMVID.classes)})


def _config(arch: str):  # a transformers PretrainedConfig
    t, labels = transformers, _labels()
    if arch == "segformer":
        return t.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[4, 2], hidden_sizes=[16, 32],
                                 patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                                 decoder_hidden_size=32, **labels)
    if arch == "beit":
        return t.BeitConfig(**VIT, out_indices=[1, 2, 3, 4], use_auxiliary_head=False, pool_scales=[1, 2], **labels)
    if arch == "data2vec-vision":
        return t.Data2VecVisionConfig(**VIT, out_indices=[1, 2, 3, 4], use_auxiliary_head=False, pool_scales=[1, 2],
                                      **labels)
    if arch == "dpt":
        return t.DPTConfig(**VIT, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 16, 16],
                           fusion_hidden_size=16, use_auxiliary_head=False, **labels)
    if arch == "mobilenet_v2":  # DeepLabV3 head
        return t.MobileNetV2Config(depth_multiplier=0.25, image_size=SIDE, **labels)
    if arch == "mobilevit":  # DeepLabV3 head
        return t.MobileViTConfig(image_size=SIDE, hidden_sizes=[16, 16, 16], num_attention_heads=2,
                                 neck_hidden_sizes=[8, 8, 16, 16, 16, 16, 32], aspp_out_channels=16, **labels)
    if arch == "mobilevitv2":
        return t.MobileViTV2Config(image_size=SIDE, width_multiplier=0.25, aspp_out_channels=16, **labels)
    if arch == "upernet-convnext":
        return t.UperNetConfig(backbone_config=t.ConvNextConfig(hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                                                out_features=["stage1", "stage2", "stage3", "stage4"]),
                               hidden_size=16, use_auxiliary_head=False, pool_scales=[1, 2], **labels)
    if arch == "upernet-swin":
        return t.UperNetConfig(backbone_config=t.SwinConfig(image_size=SIDE, embed_dim=8, depths=[1, 1, 1, 1],
                                                            num_heads=[1, 1, 2, 2], window_size=2,
                                                            out_features=["stage1", "stage2", "stage3", "stage4"]),
                               hidden_size=16, use_auxiliary_head=False, pool_scales=[1, 2], **labels)
    if arch == "sapiens2":
        return t.Sapiens2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_attention_heads=2, num_first_full_attention_layers=1,
                                num_last_full_attention_layers=1, num_register_tokens=0, image_size=SIDE, patch_size=8,
                                head_config=dict(upsample_out_channels=[16, 8], conv_out_channels=[8]), **labels)
    if arch == "tipsv2_dpt":
        return t.Tipsv2DptConfig(backbone_config=dict(model_type="tipsv2_vision_model", hidden_size=16,
                                                      num_hidden_layers=4, num_attention_heads=2, image_size=SIDE,
                                                      patch_size=8, out_indices=[1, 2, 3, 4], apply_layernorm=True,
                                                      reshape_hidden_states=False),
                                 neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=16, **labels)
    raise AssertionError(arch)


# architecture -> None where it works end to end, else the words of its one-line refusal by export (and build)
EXPORTS = {"segformer": None, "beit": None, "data2vec-vision": None, "dpt": None, "mobilenet_v2": None,
           "mobilevit": None, "upernet-convnext": None, "upernet-swin": None,
           "mobilevitv2": "mobilevitv2 (MobileViTV2) does not export to ONNX: its unfold/fold attention becomes "
                          "aten::col2im",
           "sapiens2": "sapiens2 (Sapiens2) does not export to ONNX: its head's InstanceNorm",
           "tipsv2_dpt": "tipsv2_dpt (Tipsv2Dpt) does not export to ONNX: when traced its ViT always resizes the "
                         "position embeddings"}
MODEL_TYPES = {"upernet-convnext": "upernet", "upernet-swin": "upernet"}
# A build that works runs FP16, INT8 calibration, the accuracy check and the CPU variants: 5-17 s each, so all
# but one are marked slow (SegFormer's build is in test_byom_matrix). A refused build takes well under a second.
FAST_BUILDS = ("upernet-convnext",)


def test_every_installed_architecture_has_a_case():
    """A transformers upgrade that adds an architecture fails here until it has a row (and a README table line)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES as names

    assert set(names) == {MODEL_TYPES.get(arch, arch) for arch in EXPORTS}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_camvid(tmp_path_factory.mktemp("hf-archs") / "data", per_split=4, size=(SIDE, SIDE))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """arch -> its local Hugging Face directory, written on first use."""
    root, made = tmp_path_factory.mktemp("hf-models"), {}

    def model(arch: str) -> Path:
        if arch not in made:
            import torch

            torch.manual_seed(0)
            directory = root / arch
            transformers.AutoModelForSemanticSegmentation.from_config(_config(arch)).save_pretrained(str(directory))
            (directory / "preprocessor_config.json").write_text(json.dumps(
                {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": {"height": SIDE, "width": SIDE}}))
            made[arch] = directory
        return made[arch]

    return model


@pytest.fixture(autouse=True)
def _quiet_transformers():
    """from_pretrained's progress bars would land on stderr, where the one-line errors are checked."""
    logging = transformers.utils.logging
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    yield
    if bars:
        logging.enable_progress_bar()


@pytest.mark.parametrize("arch", sorted(EXPORTS))
def test_card_export_eval(arch, models, data, tmp_path, capsys):
    import onnxruntime as ort

    model = str(models(arch))
    code, out, err = run_cli(["card", "show", model], capsys)
    assert code == 0, err
    assert "(hf)" in out.splitlines()[0] and f"input_size = [{SIDE}, {SIDE}]" in out and '"Bicyclist"' in out

    onnx_path = tmp_path / "model.onnx"
    code, _, err = run_cli(["export", "--model", model, "--data-root", str(data), "--threads", "1", "--out",
                            str(onnx_path)], capsys)
    if EXPORTS[arch]:
        assert_one_line_error(code, err, EXPORTS[arch])
        assert not onnx_path.exists() and list(tmp_path.iterdir()) == []
    else:
        assert code == 0, err
        assert json.loads(Path(f"{onnx_path}.json").read_text())["checks"]["parity"]["passed"]
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        logits = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, SIDE, SIDE), np.float32)})[0]
        assert logits.shape == (1, len(CAMVID.classes), SIDE, SIDE)  # at the input size, whatever the head's stride

    report = tmp_path / "eval.json"  # eval runs the torch model: it works even where the export does not
    code, _, err = run_cli(["eval", "--model", model, "--data-root", str(data), "--split", "val", "--threads", "1",
                            "--json", str(report)], capsys)
    assert code == 0, err
    scores = json.loads(report.read_text())
    assert scores["images"] == 4 and 0.0 <= scores["miou"] <= 1.0 and np.isfinite(scores["miou"])


@pytest.mark.parametrize("arch", [arch if arch in FAST_BUILDS or EXPORTS[arch]
                                  else pytest.param(arch, marks=pytest.mark.slow)
                                  for arch in sorted(EXPORTS) if arch != "segformer"])
def test_build_cpu(arch, models, data, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    code, _, err = run_cli(["build", "--model", str(models(arch)), "--target", "cpu", "--data-root", str(data),
                            "--calib-count", "4", "--calib-strategy", "random", "--max-miou-drop", "-1", "--limit",
                            "2", "--threads", "1", "--out", str(bundle)], capsys)
    if EXPORTS[arch]:
        lines = [line for line in err.splitlines() if line.strip()]  # progress lines, then the one error line
        assert code != 0 and lines[-1].startswith("edgeseg: error:") and EXPORTS[arch] in lines[-1], err
        assert "Traceback" not in err and not bundle.exists()
        return
    assert code == 0, err
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model_kind"] == "hf" and manifest["stage"] == "build"
    report = json.loads((bundle / "report.json").read_text())
    assert report["precisions"]["int8"]["miou"] is not None and (bundle / "model.int8.onnx").is_file()


# ------------------------------------------------------------------------------------------------ refusals


def test_mask_classification_models_are_refused_in_one_line(tmp_path, capsys):
    """Mask2Former (and MaskFormer, OneFormer, EoMT) predict class queries and masks, not per-pixel logits:
    AutoModelForSemanticSegmentation does not load them; edgeseg says so before loading anything."""
    directory = tmp_path / "my-mask2former"
    transformers.Mask2FormerConfig(**_labels()).save_pretrained(str(directory))
    for args in (["card", "show", str(directory)],
                 ["export", "--model", str(directory), "--out", str(tmp_path / "m.onnx")]):
        code, _, err = run_cli(args, capsys)
        assert_one_line_error(code, err, "(mask2former) is not loadable as AutoModelForSemanticSegmentation: a "
                                         "mask-classification (universal segmentation) model outputs class queries")
    assert not (tmp_path / "m.onnx").exists()


def test_dpt_at_a_non_square_size_is_one_line(models, data, capsys):
    code, _, err = run_cli(["eval", "--model", str(models("dpt")), "--size", "48x64", "--data-root", str(data),
                            "--threads", "1"], capsys)
    assert_one_line_error(code, err, "dpt (DPT) runs at square sizes only")


def test_data2vec_at_another_size_is_one_line(models, data, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    code, _, err = run_cli(["export", "--model", str(models("data2vec-vision")), "--size", "96x96", "--data-root",
                            str(data), "--threads", "1", "--out", str(out)], capsys)
    assert_one_line_error(code, err, f"runs only at its config's image_size {SIDE}x{SIDE}")
    assert not out.exists()


# what torch says when it tries (at opset 18 col2im exists, but its export fails on the traced output size)
TORCH_FAILURES = {"mobilevitv2": "col2im|'NoneType' object is not subscriptable", "sapiens2": "instance_norm",
                  "tipsv2_dpt": "_upsample_bilinear2d_aa"}


@pytest.mark.parametrize("arch", sorted(arch for arch, refusal in EXPORTS.items() if refusal))
def test_refused_exports_still_fail_in_torch(arch, models):
    """edgeseg refuses these before torch tries: this export without edgeseg's check must still fail, so that a
    torch or transformers release that fixes one fails here (then drop it from model_source._HF_EXPORT_LIMITS)."""
    import io
    import warnings

    import torch

    class Logits(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return self.inner(pixel_values=pixel_values).logits

    model = transformers.AutoModelForSemanticSegmentation.from_pretrained(str(models(arch))).eval()
    for opset in (17, 18):
        with warnings.catch_warnings(), pytest.raises(Exception, match=TORCH_FAILURES[arch]):
            warnings.simplefilter("ignore")
            torch.onnx.export(Logits(model), (torch.zeros(1, 3, SIDE, SIDE),), io.BytesIO(), dynamo=False,
                              opset_version=opset)
