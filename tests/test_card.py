"""Model cards: `card init` from a foreign graph, `card show` for any model, and one clear line per bad card."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeseg.card import load_card
from edgeseg.errors import UsageError
from edgeseg.data.palettes import CAMVID
from tests.test_cli import assert_one_line_error, run_cli


def tiny_foreign_onnx(path, classes=5, size=(32, 48), output_names=("out",)):
    """A plain torch.onnx.export of a small conv net: no edgeseg metadata, output named by the user."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, classes, 3, padding=1)

        def forward(self, x):
            out = self.conv(x)
            return (out, out.mean(dim=1)) if len(output_names) > 1 else out

    torch.manual_seed(0)
    torch.onnx.export(Net().eval(), (torch.zeros(1, 3, *size),), str(path), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=list(output_names))
    return path


def write_card(path, **fields):
    base = {"classes": [f"c{i}" for i in range(5)], "input_size": [32, 48]}
    base.update(fields)
    path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in base.items()) + "\n")
    return path


def test_card_init_fills_the_template_from_the_graph_and_show_prints_the_contract(tmp_path, capsys):
    model = tiny_foreign_onnx(tmp_path / "net.onnx")
    code, out, err = run_cli(["card", "init", str(model)], capsys)
    assert code == 0, err
    card_path = tmp_path / "net.card.toml"
    text = card_path.read_text()
    assert "input_size = [32, 48]" in text and 'output_name = "out"' in text
    assert len(re.search(r"^classes = \[(.*)\]$", text, re.M).group(1).split(",")) == 5
    # the user's edits: class names, BGR, 0-255 normalisation
    text = re.sub(r"^classes = .*$", 'classes = ["sky", "road", "car", "tree", "person"]', text, flags=re.M)
    text = text.replace('channel_order = "RGB"', 'channel_order = "BGR"').replace("scale = 255.0", "scale = 1.0")
    text = re.sub(r"^mean = .*$", "mean = [123.675, 116.28, 103.53]", text, flags=re.M)
    text = re.sub(r"^std = .*$", "std = [58.395, 57.12, 57.375]", text, flags=re.M)
    card_path.write_text(text)
    card = load_card(card_path)
    pre = card.preprocessing()
    # (x - 123.675) / 58.395 == (x/255 - 0.485) / 0.229: the contract's own normalisation
    assert pre.mean == pytest.approx((0.485, 0.456, 0.406)) and pre.std == pytest.approx((0.229, 0.224, 0.225))
    image = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    expected = ((image[..., ::-1].astype(np.float32) - [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375])
    np.testing.assert_allclose(pre.normalize(image)[0].transpose(1, 2, 0), expected, atol=1e-4)

    code, out, err = run_cli(["card", "show", str(model), "--card", str(card_path)], capsys)
    assert code == 0, err
    assert '"person"' in out and 'channel_order = "BGR"' in out
    code, _, err = run_cli(["card", "init", str(model)], capsys)
    assert_one_line_error(code, err, "exists")


def test_card_show_prints_zoo_contract(capsys):
    code, out, err = run_cli(["card", "show", "segformer-b0"], capsys)
    assert code == 0, err
    assert "input_size = [360, 480]" in out and '"Bicyclist"' in out and f"ignore_index = {CAMVID.ignore_index}" in out


def test_bad_cards_are_one_line_each(tmp_path, capsys):
    model = tiny_foreign_onnx(tmp_path / "net.onnx")
    cases = [
        (write_card(tmp_path / "count.toml", classes=["a", "b", "c"]), "lists 3 classes but"),
        (write_card(tmp_path / "mean.toml", mean=[0.5, 0.5]), "'mean' has 2 values"),
        (write_card(tmp_path / "std.toml", std=[0.5, 0.5, 0.5, 0.5]), "'std' has 4 values"),
        (write_card(tmp_path / "size.toml", input_size=[64, 64]), "takes 32x48 only"),
        (write_card(tmp_path / "fit.toml", fit="stretch"), "'fit' is 'stretch'"),
        (write_card(tmp_path / "typo.toml", clases=["a"]), "unknown field 'clases'"),
    ]
    for card, message in cases:
        code, _, err = run_cli(["card", "show", str(model), "--card", str(card)], capsys)
        assert_one_line_error(code, err, message)
    code, _, err = run_cli(["card", "show", str(model)], capsys)
    assert_one_line_error(code, err, "--card")


def test_non_nchw_float_inputs_are_refused_in_one_line(tmp_path, capsys):
    for name, elem, shape, message in (("nhwc", TensorProto.FLOAT, [1, 32, 48, 3], "looks NHWC"),
                                       ("uint8", TensorProto.UINT8, [1, 3, 32, 48], "is uint8")):
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], name,
                                  [helper.make_tensor_value_info("x", elem, shape)],
                                  [helper.make_tensor_value_info("y", elem, shape)])
        path = tmp_path / f"{name}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        code, _, err = run_cli(["card", "init", str(path)], capsys)
        assert_one_line_error(code, err, message)


def test_several_outputs_need_output_name(tmp_path, capsys):
    model = tiny_foreign_onnx(tmp_path / "two.onnx", output_names=("logits", "confidence"))
    code, _, err = run_cli(["card", "show", str(model), "--card", str(write_card(tmp_path / "c.toml"))], capsys)
    assert_one_line_error(code, err, "say which one")
    card = write_card(tmp_path / "named.toml", output_name="logits")
    code, out, err = run_cli(["card", "show", str(model), "--card", str(card)], capsys)
    assert code == 0 and 'output_name = "logits"' in out, err


def test_carding_a_graph_imports_no_torch(tmp_path):
    """The device side (demo, bench workers, a Jetson without torch) checks and writes cards without torch."""
    import subprocess
    import sys

    model = tiny_foreign_onnx(tmp_path / "net.onnx")
    card = write_card(tmp_path / "card.toml")
    code = ("import sys; from edgeseg.card import load_card, write_carded_onnx; "
            f"write_carded_onnx({str(model)!r}, load_card({str(card)!r}), {str(tmp_path / 'carded.onnx')!r}); "
            "from edgeseg.runners import open_runner; r = open_runner(" + repr(str(tmp_path / "carded.onnx")) +
            ", device='cpu'); print(r.preprocessing.classes[0], 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["c0", "False"]


def test_carded_graph_keeps_only_the_named_output(tmp_path):
    from edgeseg.card import write_carded_onnx
    from edgeseg.runners import open_runner

    model = tiny_foreign_onnx(tmp_path / "two.onnx", output_names=("logits", "confidence"))
    card = load_card(write_card(tmp_path / "named.toml", output_name="logits"))
    with pytest.raises(UsageError, match="'confidence' has shape 1x32x48"):  # NxHxW is not logits
        write_carded_onnx(model, load_card(write_card(tmp_path / "other.toml", output_name="confidence")),
                          tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
    write_carded_onnx(model, card, tmp_path / "carded.onnx")
    assert [o.name for o in onnx.load(str(tmp_path / "carded.onnx")).graph.output] == ["logits"]
    with open_runner(tmp_path / "carded.onnx", device="cpu") as runner:
        assert runner.infer(np.zeros((1, 3, 32, 48), np.float32)).shape == (1, 5, 32, 48)
