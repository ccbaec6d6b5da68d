"""What README.md shows is what the code and the committed results say: the command table, the benchmark table and
the pruning table. Marker `docs` (run by default; `-m "not docs"` leaves them out while a table is being redone)."""

import json
import re

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.docs

README = REPO / "README.md"


def _section(text: str, heading: str) -> str:
    """The body of a `## heading` section, up to the next `## `."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def test_readme_command_table_names_every_command_and_no_other():
    import typer

    from edgeseg.cli import app

    cli = typer.main.get_command(app)
    rows = re.findall(r"^\| `edgeseg ([a-z-]+)( [a-z-]+)?[^`]*` \|", _section(README.read_text(), "Commands"), re.M)
    assert {command for command, _ in rows} == set(cli.commands)
    for command, subcommand in rows:  # `edgeseg engine build BUNDLE`, `edgeseg data fetch camvid`
        group = cli.commands[command]
        if hasattr(group, "commands"):
            assert subcommand.strip() in group.commands, (command, subcommand)


def test_readme_benchmark_table_is_the_rendered_committed_results():
    from edgeseg.bench.readme import update_readme

    results = sorted((REPO / "benchmarks" / "results").glob("*/results.json"))
    assert results, "no committed benchmark results"
    assert update_readme(README, results, check=True) is False, "run benchmarks/render_readme_table.py"


def _prune_row(result: dict) -> str:
    def cut(before, after):
        return f"(-{1 - after / before:.0%})"

    return (f"| {result['model']} ({result['finetune_epochs']} epochs) "
            f"| {result['params_before'] / 1e6:.2f} -> {result['params_after'] / 1e6:.2f} "
            f"| {result['gflops_before']:.2f} -> {result['gflops_after']:.2f} "
            f"{cut(result['gflops_before'], result['gflops_after'])} "
            f"| {result['latency_before_ms']:.1f} -> {result['latency_after_ms']:.1f} "
            f"{cut(result['latency_before_ms'], result['latency_after_ms'])} "
            f"| {result['miou_before']:.4f} | {result['miou_pruned']:.4f} | {result['miou_finetuned']:.4f} "
            f"| {result['miou_drop']:.2f} |")


def test_readme_pruning_table_matches_the_committed_results():
    paths = sorted((REPO / "benchmarks" / "results" / "prune").glob("*-r*.json"))
    assert paths, "no committed pruning results"
    table = _section(README.read_text(), "Pruning")
    for path in paths:
        result = json.loads(path.read_text())["result"]
        assert _prune_row(result) in table, path.name


def test_readme_walk_through_writes_only_where_git_ignores():
    """Following the walk-through must leave the checkout's committed files as they are: every file it writes (an
    --out, a --save, calib's default under calibration/) goes under out/ or bundles/, which .gitignore lists."""
    import shlex

    block = _section(README.read_text(), "A walk through the pipeline").split("```")[1]
    commands = [shlex.split(line.split("#")[0]) for line in block.replace("\\\n", " ").splitlines()
                if line.startswith("edgeseg ")]
    assert [command[1] for command in commands][:5] == ["eval", "export", "calib", "quantize", "build"]
    ignored = [line.strip() for line in (REPO / ".gitignore").read_text().splitlines()]
    assert "/out/" in ignored and "/bundles/" in ignored
    for command in commands:
        if command[1] == "calib":
            assert "--out" in command, "edgeseg calib without --out writes under calibration/, which is committed"
        for option in ("--out", "--save"):
            if option in command:
                written = command[command.index(option) + 1]
                assert written.split("/")[0] in ("out", "bundles"), (command, written)
