"""Reliability as a user meets it (issue 13): edgeseg never deletes or overwrites what it did not create, Ctrl-C
exits 130 with one line, every bad input is one `edgeseg: error:` line before any work, nothing measured is not
success, and manifests hold no machine paths."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeseg.errors import DataError, UsageError
from edgeseg.output_paths import check_output_file, check_output_folder
from tests.conftest import make_camvid, sigint_as_in_a_terminal

REPO = Path(__file__).resolve().parents[1]


def edgeseg_process_env(data_root: Path | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    if data_root is not None:
        env["EDGESEG_DATA"] = str(data_root)
    return env


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under root with its size and modification time."""
    found = {}
    for path in root.rglob("*"):
        stat = path.lstat()
        found[str(path.relative_to(root))] = (stat.st_size if path.is_file() else -1, stat.st_mtime_ns)
    return found


def earlier_bundle(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"stage": "build", "model": "old"}))
    (folder / "model.onnx").write_bytes(b"old model")
    return folder


def users_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work\n")
    (folder / "photos").mkdir()
    (folder / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 not really a cat")
    return folder


# --- 1. output locations ------------------------------------------------------------------------------------

def test_a_users_folder_is_never_an_output_folder_even_with_force(tmp_path):
    folder = users_folder(tmp_path / "mine")
    for kind in ("bundle", "train", "bench"):
        for force in (False, True):
            with pytest.raises(UsageError, match="edgeseg did not write .*thesis.tex"):
                check_output_folder(folder, kind, force=force)
    assert (folder / "thesis.tex").read_text() == "years of work\n"


def test_an_earlier_output_folder_is_replaced_only_with_force(tmp_path):
    bundle = earlier_bundle(tmp_path / "bundle")
    with pytest.raises(UsageError, match="holds an earlier build bundle; add --force"):
        check_output_folder(bundle, "bundle")
    assert check_output_folder(bundle, "bundle", force=True) == bundle
    (tmp_path / "empty").mkdir()
    assert check_output_folder(tmp_path / "empty", "bundle") == tmp_path / "empty"  # an empty folder is fine
    assert check_output_folder(tmp_path / "new" / "deeper", "bundle") == tmp_path / "new" / "deeper"


def test_wrong_kind_of_output_path(tmp_path):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder").mkdir()
    with pytest.raises(UsageError, match="is a file; give a folder"):
        check_output_folder(tmp_path / "a-file", "bundle", force=True)
    with pytest.raises(UsageError, match="is a folder; give a file name"):
        check_output_file(tmp_path / "a-folder", force=True)
    with pytest.raises(UsageError, match="a-file is a file, not a folder"):
        check_output_file(tmp_path / "a-file" / "report.json")
    with pytest.raises(UsageError, match="already exists; add --force"):
        check_output_file(tmp_path / "a-file")
    assert check_output_file(tmp_path / "a-file", force=True) == tmp_path / "a-file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_parent_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(UsageError, match="not writable"):
            check_output_file(locked / "r.json")
    finally:
        locked.chmod(0o700)


def test_cli_build_refuses_a_users_folder_before_any_work(tmp_path, tiny_camvid, capsys):
    """The reported data loss: `build --out` onto a user's folder ended 'bundle ready' with their files gone."""
    from tests.test_cli import assert_one_line_error, run_cli

    folder = users_folder(tmp_path / "mine")
    before = snapshot(tmp_path / "mine")
    for extra in ([], ["--force"]):
        started = time.monotonic()
        code, _, err = run_cli(["build", "--model", "fcn-resnet18", "--weights", "random", "--size", "48x64",
                                "--data-root", str(tiny_camvid), "--out", str(folder), *extra], capsys)
        assert_one_line_error(code, err, "is a folder that edgeseg did not write")
        assert time.monotonic() - started < 20  # refused up front, not after an export
    assert snapshot(tmp_path / "mine") == before
    assert not (tmp_path / "mine.partial").exists()


def test_build_never_removes_a_users_folder_named_like_its_work_folder(tmp_path, tiny_camvid):
    from tests.test_build import tiny_build_config
    from edgeseg.build import build

    users_folder(tmp_path / "bundle.partial")
    with pytest.raises(UsageError, match="not an unfinished edgeseg bundle"):
        build(tiny_build_config(tiny_camvid, tmp_path / "bundle"))
    assert (tmp_path / "bundle.partial" / "thesis.tex").is_file()


@pytest.mark.slow
def test_force_replaces_an_earlier_bundle_and_the_manifests_hold_no_machine_paths(tmp_path, tiny_camvid):
    """A pruned build over an earlier bundle with force: the new bundle replaces it, and no JSON in the bundle
    names this machine's folders or the `<out>.partial` it was assembled in; moved, it still resolves."""
    from tests.test_build import tiny_build_config
    from edgeseg.build import build

    bundle = earlier_bundle(tmp_path / "work" / "bundle")
    with pytest.raises(UsageError, match="add --force"):
        build(tiny_build_config(tiny_camvid, bundle))
    build(tiny_build_config(tiny_camvid, bundle, force=True, prune_ratio=0.5))
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["stage"] == "build" and manifest["model"] == "fcn-resnet18"
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["bundle"]  # no .partial, no old copy
    for path in bundle.rglob("*.json"):  # inputs outside the bundle (the data root) are recorded as given
        text = path.read_text()
        assert str(tmp_path / "work") not in text and ".partial" not in text, path.name
    moved = tmp_path / "elsewhere"
    bundle.rename(moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    assert manifest["inputs"]["weights"]["path"] == "pruned.safetensors"
    for record in [manifest["inputs"]["weights"], *manifest["artifacts"].values()]:
        assert (moved / record["path"]).is_file()
    int8 = json.loads((moved / "model.int8.onnx.json").read_text())
    assert int8["inputs"]["onnx"]["path"] == "model.onnx" and int8["inputs"]["calibration"]["path"] == \
        "calibration.json"


def test_committed_results_hold_no_machine_paths():
    offenders = []
    committed = [REPO / "benchmarks" / "results", REPO / "calibration", REPO / "edgeseg" / "weights"]
    for path in (path for folder in committed for path in folder.rglob("*")):
        if path.suffix in (".json", ".md", ".csv", ".toml", ".sh"):
            text = path.read_text()
            for marker in ('"/work/', '"/root/', '"/home/', '"/tmp/', ".partial/", '"/Users/'):
                if marker in text:
                    offenders.append(f"{path.relative_to(REPO)}: {marker}")
    assert offenders == []


# --- 2. Ctrl-C ---------------------------------------------------------------------------------------------

def test_ctrl_c_during_int8_calibration_exits_130_and_leaves_nothing(tmp_path, tiny_camvid):
    """A real process and a real SIGINT, against the typer installed here (the core-install CI step repeats it
    with the oldest typer pyproject.toml allows)."""
    out = tmp_path / "bundle"
    process = subprocess.Popen(
        [sys.executable, "-m", "edgeseg", "build", "--model", "fcn-resnet18", "--weights", "random", "--size",
         "48x64", "--data-root", str(tiny_camvid), "--out", str(out), "--calib-count", "4", "--calib-strategy",
         "random", "--max-miou-drop", "-1", "--threads", "1"],
        cwd=tmp_path, env=edgeseg_process_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=sigint_as_in_a_terminal)
    seen = []
    for line in process.stderr:  # the build's stage lines are progress: stderr
        seen.append(line)
        if line.startswith("[4/") and "INT8 Q/DQ" in line:  # calibration runs now
            process.send_signal(signal.SIGINT)
            break
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, "".join(seen) + out + err
    said = [line for line in err.splitlines()
            if line.startswith("edgeseg:") and not line.startswith("edgeseg: warning:")]
    assert len(said) == 1 and said[0].startswith("edgeseg: interrupted") and "Traceback" not in err, err
    assert out == ""  # no result line: nothing was built
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "data") == []  # no bundle, no .partial


def test_typer_exit_code_inside_a_command_reaches_the_shell(tmp_path):
    """Newer typer returns typer.Exit(code) as a value when standalone_mode is off: main() must pass it on."""
    code = ("import sys, typer; from edgeseg import cli\n"
            "@cli.app.command('exit-three', hidden=True)\n"
            "def exit_three():\n    raise typer.Exit(3)\n"
            "cli.main(['exit-three'])")
    result = subprocess.run([sys.executable, "-c", code], env=edgeseg_process_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 3, result.stderr


# --- 3. the device install ----------------------------------------------------------------------------------

BLOCK_IMPORTS = """
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'click', 'onnx', 'torchvision', 'transformers'):
            raise ImportError(f'{name} is not installed (blocked by the test)')
sys.meta_path.insert(0, Blocked())
sys.argv = ['edgeseg', *sys.argv[1:]]
from edgeseg.cli import main
main()
"""


def test_core_commands_work_without_torch_or_click(tmp_path):
    """What a Jetson has: no torch, no click (typer 0.26+ vendors its own), no onnx. --help and a demo run."""
    from tests.make_tiny_onnx import write_fixtures

    write_fixtures(tmp_path)

    def edgeseg(*args):
        return subprocess.run([sys.executable, "-c", BLOCK_IMPORTS, *args], cwd=tmp_path, env=edgeseg_process_env(),
                              capture_output=True, text=True, timeout=120)

    for args in (["--help"], ["demo", "--help"], ["engine", "--help"]):
        result = edgeseg(*args)
        assert result.returncode == 0 and "Usage" in result.stdout, result.stderr
    result = edgeseg("demo", "--model", "tiny.onnx", "--source", "frames", "--no-show", "--json", "run.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run.json").read_text())["frames"] == 4


# --- 5. nothing measured is not success ---------------------------------------------------------------------

def test_evaluating_no_images_is_an_error(tiny_camvid):
    from edgeseg.evaluate import EvalConfig, evaluate_model

    for limit in (0, -2):
        with pytest.raises(DataError, match="nothing to evaluate"):
            evaluate_model(EvalConfig(model="fcn-resnet18", weights="random", data_root=str(tiny_camvid),
                                      size=(48, 64), limit=limit))


def test_a_folder_where_no_image_can_be_read_is_an_error(tmp_path, capsys):
    from tests.test_cli import assert_one_line_error, run_cli

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    code, _, err = run_cli(["eval", "--model", "fcn-resnet18", "--weights", "random", "--size", "48x64", "--data",
                            f"folder:{tmp_path / 'images'}:{tmp_path / 'masks'}"], capsys)
    assert_one_line_error(code, err, "has no samples")


def test_training_on_fewer_images_than_one_batch_is_an_error_and_writes_nothing(tmp_path):
    from edgeseg.train import TrainConfig, train

    data = make_camvid(tmp_path / "data", per_split=3)
    with pytest.raises(DataError, match="3 images, fewer than one batch of 4"):
        train(TrainConfig(model="fcn-resnet18", out_dir=str(tmp_path / "run"), data_root=str(data), epochs=1,
                          batch_size=4, crop_size=(48, 64), threads=1))
    assert not (tmp_path / "run").exists()


def test_a_bench_row_that_errored_fails_the_run_after_the_results_are_written():
    from edgeseg.bench.harness import GateFailure, check_gates

    rows = [{"id": "m/fp32/torch/48x64", "status": "ok", "accuracy": {"miou": 0.5, "miou_drop": 0.0}},
            {"id": "m/int8/ort-cpu/48x64", "status": "error", "reason": "boom"},
            {"id": "m/fp16/trt/48x64", "status": "unsupported", "reason": "no TensorRT"}]
    with pytest.raises(GateFailure, match=r"1 row\(s\) failed .*m/int8/ort-cpu/48x64"):
        check_gates(rows, None, None)
    check_gates([rows[0], rows[2]], None, None)  # unsupported rows are not failures


def test_a_bench_that_measured_nothing_writes_no_results(tmp_path, tiny_camvid, capsys):
    """Only a prebuilt ONNX model on TensorRT, which this machine lacks: every row is unsupported."""
    import onnx

    from tests.engine_helpers import make_model
    from tests.test_cli import assert_one_line_error, run_cli

    onnx.save(make_model("fp32"), str(tmp_path / "tiny.onnx"))
    suite = tmp_path / "trt-only.toml"
    suite.write_text(f'name = "trt-only"\nprecisions = ["fp32"]\nbackends = ["trt"]\nsizes = ["32x32"]\n'
                     f'[[models]]\npath = "{tmp_path / "tiny.onnx"}"\nlabel = "tiny"\n')
    # -q: the run's progress (its row lines) is not said; a busy machine's load warning may be
    code, out, err = run_cli(["-q", "bench", "--suite", str(suite), "--data-root", str(tiny_camvid), "--out",
                              str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache"), "--no-plots"], capsys)
    assert_one_line_error(code, "\n".join(line for line in err.splitlines()
                                          if not line.startswith("edgeseg: warning: load average")),
                          "nothing was measured")
    assert out == ""
    assert not (tmp_path / "results" / "results.json").exists()


# --- 4, 6 and all of it: bad inputs in real processes -------------------------------------------------------

def bad_inputs(root: Path) -> list[tuple[list[str], str]]:
    """(arguments, the text the one error line must contain). Every case fails before any long work."""
    data = ["--data-root", str(root / "data")]
    model = ["--model", "fcn-resnet18", "--weights", "random"]
    build = ["build", *model, "--size", "48x64", *data]
    train = ["train", *model, *data, "--out", "run"]
    return [
        ([*build, "--out", "mine"], "is a folder that edgeseg did not write"),
        ([*build, "--out", "mine", "--force"], "is a folder that edgeseg did not write"),
        ([*build, "--out", "old-bundle"], "holds an earlier build bundle; add --force"),
        ([*build, "--out", "a-file.txt"], "is a file; give a folder"),
        ([*build, "--out", "run", "--prune", "1.5"], "--prune 1.5 is out of range"),
        ([*build, "--out", "run", "--calib-count", "0"], "--calib-count 0 is out of range"),
        ([*build, "--out", "run", "--precision", "int4"], "choose one of: fp32, fp16, int8"),
        ([*build, "--out", "run", "--limit", "-3"], "--limit -3"),
        ([*build, "--out", "run", "--threads", "0"], "--threads 0"),
        ([*build, "--out", "run", "--target", "mars"], "mars"),
        (["eval", *model, *data, "--limit", "0"], "--limit 0 is out of range"),
        (["eval", *model, *data, "--split", "training"], "choose one of: train, val, test"),
        (["eval", *model, *data, "--device", "gpu"], "choose one of: auto, cpu, cuda"),
        (["eval", *model, *data, "--json", "mine"], "--json mine is a folder"),
        (["eval", *model, *data, "--json", "a-file.txt"], "already exists; add --force"),
        (["eval", *model, *data, "--size", "10x10"], "too small"),
        ([*train[:-1], "mine"], "is a folder that edgeseg did not write"),
        ([*train, "--epochs", "0"], "--epochs 0"),
        ([*train, "--batch-size", "-1"], "--batch-size -1"),
        ([*train, "--lr", "0"], "--lr 0 is out of range"),
        ([*train, "--scale-min", "2", "--scale-max", "1"], "--scale-max 1"),
        ([*train, "--device", "tpu"], "choose one of: auto, cpu, cuda"),
        ([*train, "--epochs", "many"], "Invalid value for '--epochs'"),
        (["export", *model, "--out", "mine"], "--out mine is a folder"),
        (["export", *model, "--out", "a-file.txt"], "already exists; add --force"),
        (["export", *model, "--opset", "11"], "--opset 11 is out of range"),
        (["export", *model, "--dynamic", "depth"], "choose one of: batch, height, width"),
        (["calib", "--model", "fcn-resnet18", *data, "--count", "0"], "--count 0"),
        (["calib", "--model", "fcn-resnet18", *data, "--strategy", "best"], "class-balanced"),
        (["calib", "--model", "fcn-resnet18", *data, "--split", "dev"], "choose one of: train, val, test"),
        (["quantize", "mine"], "is a folder; give the .onnx file"),
        (["quantize", "absent.onnx"], "absent.onnx does not exist"),
        (["quantize", "tiny.onnx", "--calibration", "binary.bin"], "is a binary file"),
        (["quantize", "tiny.onnx", "--calibration", "not-json.json"], "is not valid JSON"),
        (["quantize", "tiny.onnx", "--calibration", "mine"], "is a folder, not a file"),
        (["quantize", "tiny.onnx", "--method", "kl"], "minmax, entropy, percentile"),
        (["quantize", "tiny.onnx", "--precision", "int4"], "choose one of: int8, fp16"),
        (["prune", *model, "--ratio", "0", "--out", "p.safetensors"], "--ratio 0 is out of range"),
        (["prune", *model, "--ratio", "0.3", "--out", "mine"], "--out mine is a folder"),
        (["prune", *model, "--ratio", "0.3", "--out", "p.safetensors", "--importance", "random"], "taylor"),
        (["demo", "--model", "tiny.onnx", "--source", "frames", "--no-show", "--alpha", "1.5"], "--alpha 1.5"),
        (["demo", "--model", "tiny.onnx", "--source", "frames", "--no-show", "--mode", "heatmap"], "side-by-side"),
        (["demo", "--model", "tiny.onnx", "--source", "frames", "--no-show", "--save", "mine"], "is a folder"),
        (["demo", "--model", "tiny.onnx", "--source", "frames", "--no-show", "--max-frames", "0"], "--max-frames 0"),
        (["demo", "--model", "binary.bin", "--source", "frames", "--no-show"], "binary.bin"),
        (["bench", "--suite", "binary.bin", "--models", "fcn-resnet18"], "is a binary file"),
        (["bench", "--models", "fcn-resnet18", "--weights", "random", *data, "--out", "mine"],
         "is a folder that edgeseg did not write"),
        (["bench", "--models", "fcn-resnet18", "--limit", "0"], "--limit 0"),
        (["engine", "build", "mine"], "mine"),
        (["engine", "build", "old-bundle", "--dla-core", "-1"], "--dla-core -1"),
        (["engine", "check", "fake.engine"], "is a binary file"),
        (["engine", "check", "mine"], "mine is a folder; give the .engine file"),
        (["data", "fetch", "imagenet"], "imagenet"),
    ]


@pytest.fixture(scope="module")
def bad_input_root(tmp_path_factory):
    import cv2
    import onnx

    from tests.engine_helpers import make_model

    root = tmp_path_factory.mktemp("bad-inputs")
    make_camvid(root / "data")
    users_folder(root / "mine")
    earlier_bundle(root / "old-bundle")
    (root / "a-file.txt").write_text("the user's notes\n")
    (root / "binary.bin").write_bytes(np.random.default_rng(0).integers(0, 255, 4096, np.uint8).tobytes())
    (root / "not-json.json").write_text("{ this is not json")
    (root / "frames").mkdir()
    cv2.imwrite(str(root / "frames" / "0000.png"), np.zeros((48, 64, 3), np.uint8))
    onnx.save(make_model("fp32"), str(root / "tiny.onnx"))
    (root / "fake.engine").write_bytes(b"\x00engine")
    (root / "fake.engine.json").write_bytes(b"\x80\x81\x82 binary sidecar")
    return root


@pytest.mark.slow
def test_bad_inputs_across_all_commands_in_real_processes(bad_input_root):
    root = bad_input_root
    cases = bad_inputs(root)
    assert len({tuple(args) for args, _ in cases}) >= 30
    problems = []
    for args, expected in cases:
        before = snapshot(root)
        result = subprocess.run([sys.executable, "-m", "edgeseg", *args], cwd=root,
                                env=edgeseg_process_env(root / "data"), capture_output=True, text=True, timeout=180)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("edgeseg: error:")]
        after = snapshot(root)
        what = f"edgeseg {' '.join(args)}"
        if result.returncode == 0:
            problems.append(f"{what}: exit 0")
        if len(errors) != 1 or len(lines) != 1 or "Traceback" in result.stderr:
            problems.append(f"{what}: stderr is not one error line:\n{result.stderr[-1500:]}")
        elif expected not in errors[0]:
            problems.append(f"{what}: {errors[0]!r} does not say {expected!r}")
        if after != before:
            changed = sorted(set(before) ^ set(after) | {k for k in before if k in after and before[k] != after[k]})
            problems.append(f"{what}: files changed: {changed}")
    assert problems == [], "\n".join(problems)
