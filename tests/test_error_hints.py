"""Hints name options that exist: every `--option` written in edgeseg's messages (errors, hints, logs, help) is an
option of some `edgeseg` command, or a flag of another tool that edgeseg prints (trtexec, nvidia-smi, git)."""

import ast
import re

import typer

from edgeseg.cli import app
from tests.conftest import REPO
from tests.test_cli import assert_one_line_error, run_cli

OPTION = re.compile(r"(?<![\w-])--[a-zA-Z][a-zA-Z0-9-]*")
OTHER_TOOLS = {
    # trtexec, in the build line edgeseg/engine/plan.py renders
    "--onnx", "--saveEngine", "--fp16", "--int8", "--allowGPUFallback", "--stronglyTyped", "--memPoolSize", "--calib",
    "--builderOptimizationLevel", "--useDLACore", "--timingCacheFile", "--minShapes", "--optShapes", "--maxShapes",
    "--shapes",
    "--query-gpu", "--format",  # nvidia-smi (host probing)
    "--short", "--porcelain", "--untracked-files",  # git (benchmark environment)
    "--verbose",  # nvpmodel -q --verbose (power modes)
    "--interval",  # tegrastats --interval (bench power sampling)
    "--nproc", "--nnodes", "--rdzv-endpoint",  # torchrun (--nproc_per_node reads as --nproc here)
    "--write-manifest",  # python -m edgeseg.data.fetch (maintainer script)
    "--check",  # benchmarks/render_readme_table.py
    "--help",  # every command (click adds it)
    "--exists",  # gst-inspect-1.0 (edgeseg doctor)
}
# benchmarks/device_check.py is an argparse script, not an edgeseg command: its own options count as known.
DEVICE_CHECK_OPTIONS = set(re.findall(r'add_argument\("(--[a-z0-9-]+)"',
                                      (REPO / "benchmarks" / "device_check.py").read_text()))


def command_options() -> dict[str, set[str]]:
    """Every option spelling (including --no-x) -> the commands that take it, by introspecting the Typer app."""
    options: dict[str, set[str]] = {}

    def visit(command, path):
        for param in command.params:
            for spelling in (*param.opts, *param.secondary_opts):
                options.setdefault(spelling, set()).add(" ".join(path))
        for name, sub in getattr(command, "commands", {}).items():
            visit(sub, (*path, name))

    visit(typer.main.get_command(app), ())
    return options


def mentioned_options() -> dict[str, list[str]]:
    """`--option` -> where edgeseg's source writes it in a string (f-string parts included)."""
    mentioned: dict[str, list[str]] = {}
    for path in sorted((REPO / "edgeseg").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for option in OPTION.findall(node.value):
                    mentioned.setdefault(option, []).append(f"{path.relative_to(REPO)}:{node.lineno}")
    return mentioned


def test_every_option_a_message_names_exists():
    known = command_options()
    assert {"--data-root", "--model", "--no-show"} <= set(known)  # the introspection sees options and --no- flags
    mentioned = mentioned_options()
    assert "--data-root" in mentioned and "--max-miou-drop" in mentioned  # and the scan sees messages
    allowed = set(known) | OTHER_TOOLS | DEVICE_CHECK_OPTIONS
    unknown = {option: where for option, where in mentioned.items() if option not in allowed}
    assert not unknown, f"messages name options no command has: {unknown}"


def test_a_missing_data_folder_names_the_option_that_sets_it(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEG_DATA", str(tmp_path / "absent"))
    code, _, err = run_cli(["eval", "--model", "fcn-resnet18", "--weights", "random"], capsys)
    assert_one_line_error(code, err, "set EDGESEG_DATA or --data-root, or run 'edgeseg data fetch camvid'")
    code, _, err = run_cli(["eval", "--model", "fcn-resnet18", "--weights", "random",
                            "--data-root", str(tmp_path / "elsewhere")], capsys)
    assert_one_line_error(code, err, f"data directory {tmp_path / 'elsewhere'} (from --data-root) does not exist")
