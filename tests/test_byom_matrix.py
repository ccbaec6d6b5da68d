"""Every command that takes a model x every kind of model: a zoo name, a foreign .onnx with its card, a build
bundle, a local Hugging Face directory and a user's module:factory. A cell that is meant to work runs the real
command (in-process, tiny models, generated CamVid-layout data); a cell that cannot work (training a compiled
graph, exporting an ONNX) gives its one-line error. TensorRT engines are left out: no TensorRT here (their cells
are the bundle's, through the engine runner, in the GPU tests).

The whole matrix shares one world (module scope): the data, the models and a bundle built once."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgeseg.data.palettes import CAMVID
from tests.conftest import make_camvid
from tests.test_cli import assert_one_line_error, run_cli

KINDS = ("zoo", "onnx", "bundle", "hf", "factory")
TORCH_KINDS = ("zoo", "hf", "factory")
GRAPH_KINDS = ("onnx", "bundle")
ZOO = "lraspp-mobilenetv3"  # the smallest zoo model, random weights, run at the tiny data's size
FACTORY = "matrixseg:build"
SIZE = "48x64"

FACTORY_MODULE = '''
import torch
from torch import nn


class MatrixSeg(nn.Module):
    """A user's own network: returns a dict like torchvision's models, at half resolution."""

    def __init__(self, num_classes=11):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(16, num_classes, 1)

    def forward(self, x):
        return {"out": self.head(self.body(x))}


def build():
    return MatrixSeg()
'''


@dataclass(frozen=True)
class World:
    root: Path
    data: Path  # data root holding CamVid/ (generated scenes)
    hf: Path  # Hugging Face SegFormer directory, 11 CamVid classes, random weights
    weights: Path  # the factory model's state_dict
    card: Path  # the card of the factory model and of its plain ONNX export
    onnx: Path  # the factory model exported with plain torch.onnx.export: no edgeseg metadata
    bundle: Path  # `edgeseg build` of the foreign ONNX with its card

    def model(self, kind: str, weights: bool = True, card: bool = True, option: str = "--model") -> list[str]:
        """The arguments naming a model of `kind`; `weights`/`card`: whether the command takes those options."""
        value = {"zoo": ZOO, "onnx": str(self.onnx), "bundle": str(self.bundle), "hf": str(self.hf),
                 "factory": FACTORY}[kind]
        args = [option, value] if option else [value]
        if weights and kind in ("zoo", "factory"):
            args += ["--weights", "random" if kind == "zoo" else str(self.weights)]
        if card and kind in ("onnx", "factory"):
            args += ["--card", str(self.card)]
        return args


def _cli(args: list[str]) -> int:
    from edgeseg.cli import main

    try:
        main(args)
    except SystemExit as exit_info:
        return exit_info.code or 0
    return 0


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    import torch
    from safetensors.torch import save_file
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    root = tmp_path_factory.mktemp("matrix")
    data = make_camvid(root / "data", per_split=4)
    torch.manual_seed(0)
    config = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[4, 2], hidden_sizes=[16, 32],
                             patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                             decoder_hidden_size=32, num_labels=11,
                             id2label=dict(enumerate(CAMVID.classes)),
                             label2id={name: i for i, name in enumerate(CAMVID.classes)})
    hf = root / "my-segformer"
    SegformerForSemanticSegmentation(config).save_pretrained(str(hf))
    (hf / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "size": {"height": 48, "width": 64}}))

    code = root / "code"
    code.mkdir()
    (code / "matrixseg.py").write_text(FACTORY_MODULE)
    sys.path.insert(0, str(code))
    import matrixseg

    model = matrixseg.build().eval()
    weights = root / "matrixseg.safetensors"
    save_file(model.state_dict(), str(weights))
    card = root / "matrixseg.card.toml"
    card.write_text(f"name = \"matrixseg\"\nclasses = {json.dumps(list(CAMVID.classes))}\nignore_index = 11\n"
                    "input_size = [48, 64]\n")

    class Logits(torch.nn.Module):  # what a user exporting it by hand would write: full-size logits
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return torch.nn.functional.interpolate(self.inner(x)["out"], size=x.shape[-2:], mode="bilinear")

    onnx_path = root / "foreign.onnx"
    torch.onnx.export(Logits(model).eval(), (torch.zeros(1, 3, 48, 64),), str(onnx_path), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["out"])
    bundle = root / "bundle"
    assert _cli(["build", "--model", str(onnx_path), "--card", str(card), "--data-root", str(data), "--calib-count",
                 "4", "--calib-strategy", "random", "--max-miou-drop", "-1", "--limit", "2", "--threads", "1",
                 "--out", str(bundle)]) == 0
    yield World(root, data, hf, weights, card, onnx_path, bundle)
    sys.path.remove(str(code))
    sys.modules.pop("matrixseg", None)


def sized(kind: str) -> list[str]:
    """The zoo model's contract is 360x480: the tiny data runs it at the data's size, where a command takes one."""
    return ["--size", SIZE] if kind == "zoo" else []


# ------------------------------------------------------------------------------------------------ eval


@pytest.mark.parametrize("kind", KINDS)
def test_eval(world, kind, tmp_path, capsys):
    report = tmp_path / "eval.json"
    code, _, err = run_cli(["eval", *world.model(kind), *sized(kind), "--data-root", str(world.data), "--split",
                            "val", "--threads", "1", "--json", str(report)], capsys)
    assert code == 0, err
    scores = json.loads(report.read_text())
    assert scores["images"] == 4 and list(scores["per_class_iou"]) == list(CAMVID.classes)
    assert scores["input_size"] == [48, 64]


# ------------------------------------------------------------------------------------------------ card show, calib


@pytest.mark.parametrize("kind", KINDS)
def test_card_show(world, kind, capsys):
    code, out, err = run_cli(["card", "show", *world.model(kind, weights=False, option="")], capsys)
    assert code == 0, err
    assert f"({kind})" in out.splitlines()[0] and '"Bicyclist"' in out and "input_size = [" in out


def test_card_show_factory_without_a_card_is_one_line(world, capsys):
    code, _, err = run_cli(["card", "show", FACTORY], capsys)
    assert_one_line_error(code, err, "has no contract of its own; give --card")


@pytest.mark.parametrize("kind", KINDS)
def test_calib(world, kind, tmp_path, capsys):
    out = tmp_path / "calib.json"
    code, _, err = run_cli(["calib", *world.model(kind, weights=False), "--data-root", str(world.data), "--count", "2",
                            "--strategy", "random", "--out", str(out)], capsys)
    assert code == 0, err
    assert json.loads(out.read_text())["count"] == 2


# ------------------------------------------------------------------------------------------------ export, quantize


@pytest.mark.parametrize("kind", KINDS)
def test_export(world, kind, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    code, _, err = run_cli(["export", *world.model(kind), *sized(kind), "--data-root", str(world.data), "--threads",
                            "1", "--out", str(out)], capsys)
    if kind in GRAPH_KINDS:
        assert_one_line_error(code, err, f"is already an {kind}; export takes a PyTorch model")
        assert not out.exists()
        return
    assert code == 0, err
    assert json.loads(Path(f"{out}.json").read_text())["checks"]["parity"]["passed"]


@pytest.mark.parametrize("kind", KINDS)
def test_quantize(world, kind, tmp_path, capsys):
    """quantize takes the ONNX file itself (positional): a foreign one with its card; other kinds are refused."""
    out = tmp_path / "model.fp16.onnx"
    code, _, err = run_cli(["quantize", *world.model(kind, weights=False, card=kind == "onnx", option=""),
                            "--precision", "fp16", "--out", str(out)], capsys)
    if kind == "onnx":
        assert code == 0, err
        assert out.is_file()
        return
    assert_one_line_error(code, err, "is a folder; give the .onnx file" if kind in ("bundle", "hf")
                          else "does not exist")


# ------------------------------------------------------------------------------------------------ build


@pytest.mark.parametrize("kind", KINDS)
def test_build(world, kind, tmp_path, capsys):
    if kind == "onnx":  # the world's bundle is this cell: the foreign graph with its card, through the CLI
        bundle = world.bundle
    else:
        bundle = tmp_path / "bundle"
        code, _, err = run_cli(["build", *world.model(kind), *sized(kind), "--data-root", str(world.data),
                                "--calib-count", "4", "--calib-strategy", "random", "--max-miou-drop", "-1",
                                "--limit", "2", "--threads", "1", "--out", str(bundle)], capsys)
        if kind == "bundle":
            assert_one_line_error(code, err, "is already built (a bundle)")
            return
        assert code == 0, err
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model_kind"] == kind and manifest["stage"] == "build"
    report = json.loads((bundle / "report.json").read_text())
    assert report["precisions"]["int8"]["miou"] is not None


@pytest.mark.parametrize("kind", TORCH_KINDS)
def test_build_prune(world, kind, tmp_path, capsys):
    """build --prune on each PyTorch kind: the pruned model (smaller) is what the bundle's ONNX is exported from."""
    bundle = tmp_path / "bundle"
    code, _, err = run_cli(["build", *world.model(kind), *sized(kind), "--prune", "0.5", "--data-root",
                            str(world.data), "--calib-count", "4", "--calib-strategy", "random", "--max-miou-drop",
                            "-1", "--limit", "2", "--threads", "1", "--out", str(bundle)], capsys)
    assert code == 0, err
    pruned = bundle / ("pruned-hf" if kind == "hf" else "pruned.safetensors")
    metrics = json.loads(Path(f"{pruned}.json").read_text())["metrics"]
    assert metrics["params_after"] < metrics["params_before"]
    import onnx

    graph = onnx.load(str(bundle / "model.onnx"))
    weights = sum(int(np.prod(t.dims)) for t in graph.graph.initializer if len(t.dims) > 1)
    assert weights <= metrics["params_after"]  # the graph holds the pruned layers, not the factory's or config's


def test_build_prune_of_a_graph_is_one_line(world, tmp_path, capsys):
    code, _, err = run_cli(["build", *world.model("onnx"), "--prune", "0.5", "--out", str(tmp_path / "b")], capsys)
    assert_one_line_error(code, err, "--prune needs a PyTorch model")
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------------ demo, bench


@pytest.mark.parametrize("kind", KINDS)
def test_demo(world, kind, tmp_path, capsys):
    summary = tmp_path / "demo.json"
    code, out, err = run_cli(["demo", *world.model(kind), "--source", str(world.data / "CamVid" / "test"),
                              "--no-show", "--max-frames", "2", "--threads", "1", "--json", str(summary)], capsys)
    assert code == 0, err
    assert json.loads(summary.read_text())["frames"] == 2
    exported = "to ONNX first" in out + err
    assert exported == (kind in TORCH_KINDS)  # said when it happens, and only then


def test_demo_weights_for_a_graph_is_one_line(world, capsys):
    code, _, err = run_cli(["demo", "--model", str(world.bundle), "--weights", str(world.weights), "--source",
                            str(world.data / "CamVid" / "test"), "--no-show"], capsys)
    assert_one_line_error(code, err, "--weights is for a PyTorch --model")


@pytest.mark.parametrize("kind", KINDS)
def test_bench(world, kind, tmp_path, capsys):
    out = tmp_path / "results"
    code, _, err = run_cli(["bench", *world.model(kind, option="--models"), "--precisions", "fp32", "--backends",
                            "ort-cpu", "--size", SIZE, "--data-root", str(world.data), "--limit", "2", "--threads",
                            "1", "--min-seconds", "0.02", "--no-plots", "--cache-dir", str(tmp_path / "cache"),
                            "--out", str(out)], capsys)
    assert code == 0, err
    rows = [row for row in json.loads((out / "results.json").read_text())["rows"] if row["backend"] == "ort-cpu"]
    assert len(rows) == 1 and rows[0]["status"] == "ok", rows
    assert rows[0]["accuracy"]["images"] == 2 and rows[0]["accuracy"]["miou"] is not None
    if kind != "zoo":  # what the row ran is still there after the run (an export or carded copy lives in the cache)
        artifact = Path(rows[0]["artifact"]["path"]).expanduser()
        assert artifact.is_file(), rows[0]["artifact"]
        if kind in ("hf", "factory", "onnx"):
            assert artifact.is_relative_to(tmp_path / "cache")


# ------------------------------------------------------------------------------------------------ train


def _train(world, kind, out, *extra) -> list[str]:
    return ["train", *world.model(kind), "--data-root", str(world.data), "--out", str(out), "--epochs", "1",
            "--batch-size", "2", "--crop", SIZE, "--warmup-iters", "1", "--eval-every", "1", "--threads", "1",
            *extra]


@pytest.mark.parametrize("kind", KINDS)
def test_train(world, kind, tmp_path, capsys):
    """Train one epoch, resume for a second; the best checkpoint goes on to the next stage with the same kind of
    --model (a Hugging Face directory; the factory's --weights; the zoo's --weights)."""
    run = tmp_path / "run"
    code, out, err = run_cli(_train(world, kind, run), capsys)
    if kind in GRAPH_KINDS:
        assert_one_line_error(code, err, "which has no trainable weights")
        assert not run.exists()
        return
    assert code == 0, err
    args = _train(world, kind, run, "--resume")
    args[args.index("--epochs") + 1] = "2"
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "resuming" in out + err
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == [1, 2]
    best = Path(out.strip().splitlines()[-1].split("best checkpoint: ")[1])
    if kind == "hf":
        assert best.is_dir() and (best / "config.json").is_file()
        model = ["--model", str(best)]
    else:
        model = ["--model", ZOO if kind == "zoo" else FACTORY, "--weights", str(best)]
    report = tmp_path / "eval.json"
    code, _, err = run_cli(["eval", *model, *sized(kind), "--data-root", str(world.data), "--split", "val",
                            "--threads", "1", "--json", str(report)], capsys)  # no --card: the contract travels
    assert code == 0, err
    recorded = json.loads(Path(f"{best}.json").read_text())["metrics"]
    assert json.loads(report.read_text())["miou"] == pytest.approx(recorded["val"]["miou"], abs=1e-6)


def test_train_says_progress_on_stderr_and_only_its_result_on_stdout(world, tmp_path, capsys):
    code, out, err = run_cli(_train(world, "zoo", tmp_path / "run"), capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("best checkpoint: "), out
    assert "epoch 1: loss" in err and "val mIoU" in err
    code, out, err = run_cli(["-q", *_train(world, "zoo", tmp_path / "quiet")], capsys)
    assert code == 0, err
    assert out.strip().startswith("best checkpoint: ") and "epoch" not in err, err


def test_train_refuses_a_model_with_other_classes_than_the_data(world, tmp_path, capsys):
    from tests.test_byom_data import make_cityscapes

    cityscapes = make_cityscapes(tmp_path / "cs", per_split=2)
    code, _, err = run_cli(["train", "--model", str(world.hf), "--data", f"cityscapes:{cityscapes}", "--out",
                            str(tmp_path / "run"), "--epochs", "1"], capsys)
    assert_one_line_error(code, err, "predicts 11 classes but cityscapes/train has 19")


def test_train_hf_refuses_weights_and_new_head(world, tmp_path, capsys):
    code, _, err = run_cli(_train(world, "hf", tmp_path / "run", "--weights", str(world.weights)), capsys)
    assert_one_line_error(code, err, "is a Hugging Face model with its own weights; drop --weights")
    code, _, err = run_cli(_train(world, "factory", tmp_path / "run", "--new-head"), capsys)
    assert_one_line_error(code, err, "--new-head replaces a zoo model's classifier")


# ------------------------------------------------------------------------------------------------ prune


@pytest.mark.parametrize("kind", KINDS)
def test_prune(world, kind, tmp_path, capsys):
    """Prune half the channels; the pruned model reloads in the next stage with the same kind of --model and
    scores what the prune report measured."""
    out = tmp_path / ("pruned" if kind == "hf" else "pruned.safetensors")
    code, _, err = run_cli(["prune", *world.model(kind), *sized(kind), "--ratio", "0.5", "--no-latency",
                            "--data-root", str(world.data), "--split", "val", "--threads", "1", "--out", str(out)],
                           capsys)
    if kind in GRAPH_KINDS:
        assert_one_line_error(code, err, "prune takes a PyTorch model")
        assert not out.exists()
        return
    assert code == 0, err
    sidecar = json.loads(Path(f"{out}.json").read_text())
    metrics = sidecar["metrics"]
    assert metrics["params_after"] < metrics["params_before"]
    if kind == "hf":
        model = ["--model", str(out)]
        assert metrics["classifier_layers"] == ["model.decode_head.classifier"]
    else:
        model = ["--model", ZOO if kind == "zoo" else FACTORY, "--weights", str(out)]
        if kind == "zoo":  # the zoo entry names them: LR-ASPP has two
            assert metrics["classifier_layers"] == ["model.classifier.high_classifier",
                                                    "model.classifier.low_classifier"]
        if kind == "factory":  # found from the graph
            assert metrics["classifier_layers"] == ["model.head"]
            assert "model.body.0" in sidecar["spec"]["modules"]
    report = tmp_path / "eval.json"
    code, _, err = run_cli(["eval", *model, *sized(kind), "--data-root", str(world.data), "--split", "val",
                            "--threads", "1", "--json", str(report)], capsys)
    assert code == 0, err
    assert json.loads(report.read_text())["miou"] == pytest.approx(metrics["miou_pruned"], abs=1e-6)


def test_prune_classifier_not_found_or_wrong_is_one_line(world, tmp_path, capsys):
    five = tmp_path / "five.card.toml"  # a card whose class count no layer of the model produces
    five.write_text('classes = ["a", "b", "c", "d", "e"]\ninput_size = [48, 64]\n')
    base = ["prune", "--model", FACTORY, "--weights", str(world.weights), "--ratio", "0.5", "--no-latency",
            "--out", str(tmp_path / "p.safetensors")]
    code, _, err = run_cli([*base, "--card", str(five)], capsys)
    assert_one_line_error(code, err, "found no classifier in matrixseg:build: no conv or linear layer with 5 outputs")
    code, _, err = run_cli([*base, "--card", str(world.card), "--classifier", "body.3"], capsys)
    assert_one_line_error(code, err, "--classifier model.body.3 has 16 outputs, not one per class (11)")
    code, _, err = run_cli([*base, "--card", str(world.card), "--classifier", "nope"], capsys)
    assert_one_line_error(code, err, "--classifier 'nope': the model has no layer of that name")
    code, _, err = run_cli(["prune", "--model", str(world.hf), "--ratio", "0.5", "--out",
                            str(tmp_path / "p.safetensors")], capsys)
    assert_one_line_error(code, err, "a pruned Hugging Face model is a directory")
    assert not (tmp_path / "p.safetensors").exists()


def test_an_engine_cannot_be_trained_pruned_or_exported(tmp_path, capsys):
    """An engine needs TensorRT to run, not to be refused: the refusals are checked here on any machine."""
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not really an engine")
    for args, message in (
            (["train", "--model", str(engine), "--out", str(tmp_path / "run")], "is a TensorRT engine, which has no "
                                                                                 "trainable weights"),
            (["prune", "--model", str(engine), "--ratio", "0.3", "--out", str(tmp_path / "p.safetensors")],
             "is a TensorRT engine: prune takes a PyTorch model"),
            (["export", "--model", str(engine), "--out", str(tmp_path / "m.onnx")], "is already an engine")):
        code, _, err = run_cli(args, capsys)
        assert_one_line_error(code, err, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.engine"]  # nothing half-written
