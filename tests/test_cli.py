"""The command line as a user meets it: help, the zoo table, and one clear line for each bad input."""

import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgeseg.cli import main


def run_cli(args, capsys):
    """Run the console entry point in-process; returns (exit code, stdout, stderr)."""
    code = 0
    try:
        main(args)
    except SystemExit as exit_info:
        code = 0 if exit_info.code is None else exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, pattern):
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("edgeseg: error:") and pattern in lines[0], lines[0]


TOP_LEVEL_COMMANDS = {"models", "eval", "train", "export", "calib", "quantize", "build", "demo", "bench", "prune",
                      "targets", "data", "engine", "doctor", "card"}


def help_command_names(help_text: str) -> list[str]:
    """The command names in the Commands section of `--help`, in order: the first word of every row whose first
    column is filled (a wrapped description continues on a row with that column blank). Reads Typer's rich panel
    (`╭─ Commands ─`, rows `│ name  text │`) and click's plain layout (`Commands:`, rows `  name  text`)."""
    names, inside = [], False
    for line in help_text.splitlines():
        if "─ Commands ─" in line or line.strip() == "Commands:":
            inside = True
        elif inside and (line.startswith("╰") or not line.strip()):
            break
        elif inside:
            row = line.strip().strip("│") if line.startswith("│") else line[1:]
            if len(row) > 1 and row[0] == " " and row[1] != " ":
                names.append(row.split()[0])
    return names


def test_help_lists_commands():
    result = subprocess.run([sys.executable, "-m", "edgeseg", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    names = help_command_names(result.stdout)
    assert len(names) == len(set(names)) and set(names) == TOP_LEVEL_COMMANDS, result.stdout


def command_paths() -> dict[tuple[str, ...], object]:
    """Every command and group of the app, by its path (() is edgeseg itself)."""
    import typer

    from edgeseg.cli import app

    paths = {}

    def visit(command, path):
        paths[path] = command
        for name, sub in getattr(command, "commands", {}).items():
            visit(sub, (*path, name))

    visit(typer.main.get_command(app), ())
    return paths


def test_every_option_and_argument_has_help():
    missing = [f"{' '.join(path) or 'edgeseg'} {param.name}" for path, command in command_paths().items()
               for param in command.params if not (getattr(param, "help", None) or "").strip()]
    assert len(command_paths()) > 20 and not missing, missing


def test_help_shows_usage_names_not_types(capsys):
    """Flags show no type (typer prints <bool>, click BOOLEAN) and values a usage name (N, PATH, HxW), not <int>."""
    for path in command_paths():
        code, out, _ = run_cli([*path, "--help"], capsys)
        assert code == 0 and "Usage:" in out, path
        for shown in ("<bool>", "BOOLEAN", "<int>", "<float>"):
            assert shown not in out, (path, shown, out)
    code, out, _ = run_cli(["eval", "--help"], capsys)
    for usage_name in ("--size  *HxW", "--limit  *N ", "--data-root  *PATH", "--split  *SPLIT"):
        assert re.search(usage_name, out), (usage_name, out)


def test_one_vocabulary_across_commands():
    """The split a result is measured on is --split, an image count --limit, --device defaults to auto, and every
    command that runs a model takes --threads; the old spellings are accepted but never shown."""
    commands = {path[0]: command for path, command in command_paths().items() if len(path) == 1}
    for name, command in commands.items():
        shown = {opt for param in command.params if not getattr(param, "hidden", False) for opt in param.opts}
        assert not shown & {"--eval-split", "--eval-limit"}, name
        for param in command.params:
            if param.name == "device":
                assert param.default == "auto", name
    for name in ("eval", "export", "quantize", "build", "bench", "prune", "train", "demo"):
        assert "threads" in {param.name for param in commands[name].params}, name
    for name in ("eval", "build", "bench", "prune"):
        assert {"split", "limit"} <= {param.name for param in commands[name].params}, name
    for name in ("build", "quantize"):
        assert {"budget_split", "budget_limit"} <= {param.name for param in commands[name].params}, name


def test_old_option_spellings_still_work(capsys, tmp_path):
    model = ["--model", "fcn-resnet18", "--weights", "random", "--data-root", str(tmp_path)]
    code, _, err = run_cli(["prune", *model, "--ratio", "0.3", "--out", str(tmp_path / "p"), "--eval-limit", "0"],
                           capsys)
    assert_one_line_error(code, err, "--limit 0 is out of range")  # folded into --limit and checked as such
    code, _, err = run_cli(["build", *model, "--out", str(tmp_path / "b"), "--eval-split", "training"], capsys)
    assert_one_line_error(code, err, "--split 'training' is not accepted")
    code, _, err = run_cli(["build", *model, "--out", str(tmp_path / "b"), "--split", "val", "--eval-split", "test"],
                           capsys)
    assert_one_line_error(code, err, "give --split once (--eval-split is its old spelling)")
    code, _, err = run_cli(["build", *model, "--out", str(tmp_path / "b"), "--split", "test", "--eval-split", "val"],
                           capsys)  # the new spelling with its default value is still a second answer
    assert_one_line_error(code, err, "give --split once (--eval-split is its old spelling)")
    code, _, err = run_cli(["quantize", str(tmp_path / "m.onnx"), "--eval-split", "training"], capsys)
    assert_one_line_error(code, err, "--budget-split 'training' is not accepted")


def test_models_prints_the_zoo_table(capsys):
    code, out, _ = run_cli(["models"], capsys)
    assert code == 0
    for name in ("segformer-b0", "segformer-b5", "deeplabv3plus-mobilenetv2", "lraspp-mobilenetv3", "unet-resnet34"):
        assert name in out
    assert "transformers" in out and "segmentation-models-pytorch" in out


def test_unknown_option_and_missing_value_are_one_line_usage_errors(capsys):
    for args, message in ((["eval", "--model", "segformer-b0", "--eval-limit", "1"], "No such option: --eval-limit"),
                          (["train", "--out", "x"], "Missing option"),
                          (["eval", "--model"], "requires an argument")):
        code, _, err = run_cli(args, capsys)
        assert code == 2, err
        assert_one_line_error(code, err, message)  # click's message on edgeseg's one line, no usage block


def test_unknown_option_from_the_console_script_has_no_traceback():
    result = subprocess.run([sys.executable, "-m", "edgeseg", "eval", "--bogus", "1"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "No such option: --bogus" in result.stderr


def test_unknown_model(capsys, tiny_camvid):
    code, _, err = run_cli(["eval", "--model", "segformer-b9", "--data-root", str(tiny_camvid)], capsys)
    assert_one_line_error(code, err, "unknown model 'segformer-b9'")


def test_missing_data_dir(capsys, tmp_path):
    code, _, err = run_cli(["eval", "--model", "fcn-resnet18", "--weights", "random",
                            "--data-root", str(tmp_path / "absent")], capsys)
    assert_one_line_error(code, err, "does not exist")


def test_corrupt_png(capsys, tiny_camvid):
    (tiny_camvid / "CamVid" / "test" / "Seq01_test0000.png").write_bytes(b"garbage")
    code, _, err = run_cli(["eval", "--model", "fcn-resnet18", "--weights", "random",
                            "--data-root", str(tiny_camvid)], capsys)
    assert_one_line_error(code, err, "Seq01_test0000.png cannot be read")


def test_mask_of_another_size(capsys, tiny_camvid):
    cv2.imwrite(str(tiny_camvid / "CamVid" / "testannot" / "Seq01_test0000.png"), np.zeros((10, 10), np.uint8))
    code, _, err = run_cli(["eval", "--model", "fcn-resnet18", "--weights", "random",
                            "--data-root", str(tiny_camvid)], capsys)
    assert_one_line_error(code, err, "is 10x10 but image")


def test_wrong_class_count(capsys, tiny_camvid, tmp_path):
    import torch

    from edgeseg.data.palettes import CITYSCAPES
    from edgeseg.zoo.weights import load_model

    torch.save(load_model("fcn-resnet18", "random", label_set=CITYSCAPES).model.state_dict(), tmp_path / "c.pth")
    code, _, err = run_cli(["eval", "--model", "fcn-resnet18", "--weights", str(tmp_path / "c.pth"),
                            "--data-root", str(tiny_camvid)], capsys)
    assert_one_line_error(code, err, "predict 19 classes but camvid has 11")


def test_encoder_only_checkpoint_is_one_clear_line(capsys, tiny_camvid, tmp_path):
    from transformers import SegformerForImageClassification

    from edgeseg.zoo.segformer import segformer_config

    SegformerForImageClassification(segformer_config("b0", 11)).save_pretrained(tmp_path / "mit")
    capsys.readouterr()  # save_pretrained's own progress bar
    code, _, err = run_cli(["eval", "--model", "segformer-b0", "--weights", str(tmp_path / "mit"),
                            "--data-root", str(tiny_camvid)], capsys)
    assert_one_line_error(code, err, "encoder-only checkpoint")  # and no transformers table of missing layers


def test_fine_tuning_weights_of_other_classes_needs_new_head(capsys, tiny_camvid, tmp_path):
    import torch

    from edgeseg.checkpoint import read_checkpoint_sidecar
    from edgeseg.data.palettes import CITYSCAPES
    from edgeseg.zoo.weights import load_model

    torch.save(load_model("fcn-resnet18", "random", label_set=CITYSCAPES).model.state_dict(), tmp_path / "c.pth")
    args = ["train", "--model", "fcn-resnet18", "--weights", str(tmp_path / "c.pth"), "--data-root",
            str(tiny_camvid), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "2", "--crop", "48x64",
            "--eval-every", "0", "--threads", "1"]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, "--new-head")
    assert not (tmp_path / "run" / "best.safetensors").exists()
    code, out, err = run_cli([*args, "--new-head"], capsys)
    assert code == 0, err
    assert "new head for camvid: 19 -> 11 classes, 6 tensors start afresh (head32.4.bias" in err  # progress
    sidecar = read_checkpoint_sidecar(tmp_path / "run" / "best.safetensors")
    assert sidecar["preprocessing"]["classes"][0] == "Sky"
    assert sidecar["recipe"]["weights_resolved"]["new_head"]["from_classes"] == 19


def test_bad_size_and_missing_weights_file(capsys, tiny_camvid):
    code, _, err = run_cli(["eval", "--model", "fcn-resnet18", "--size", "big", "--data-root", str(tiny_camvid)],
                           capsys)
    assert_one_line_error(code, err, "is not HEIGHTxWIDTH")
    code, _, err = run_cli(["eval", "--model", "fcn-resnet18", "--weights", "nothing-here.pth",
                            "--data-root", str(tiny_camvid)], capsys)
    assert_one_line_error(code, err, "no such file")


def test_eval_writes_json_report(capsys, toy_checkpoint, tmp_path):
    import json

    data, checkpoint = toy_checkpoint  # trained a little: IoUs that differ from class to class
    code, out, _ = run_cli(["eval", "--model", "fcn-resnet18", "--weights", str(checkpoint), "--data-root", str(data),
                            "--json", str(tmp_path / "r.json")], capsys)
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    scored = [iou for iou in report["per_class_iou"].values() if iou is not None]
    assert report["images"] == 8 and len(set(scored)) > 1
    assert report["miou"] == pytest.approx(sum(scored) / len(scored))  # classes seen nowhere are left out
    assert set(report["per_class_iou"]) == {"Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol",
                                            "Fence", "Car", "Pedestrian", "Bicyclist"}
    assert re.search(rf"mIoU\W+{report['miou']:.4f}", out), out  # the table shows what the report holds
