"""The options several commands share, defined once so every command words them the same (Polygraphy's argument
groups are the model): the same name, the same usage name (PATH, N, HxW) and the same help everywhere.

Each function returns a fresh `typer.Option`; a command passes its own default or help where its meaning differs
(e.g. the split `build` reports on), never its own spelling. Old spellings that commands used before the vocabulary
was unified stay accepted as hidden options (`old_spelling`) and are folded in with `renamed`.
"""

from __future__ import annotations

from typing import Any

import typer

from edgeseg.errors import UsageError

MODEL_HELP = ("zoo name, .onnx (with --card if foreign), build bundle, .engine, Hugging Face directory or hub id, "
              "or package.module:factory (with --weights and --card)")
WEIGHTS_HELP = "checkpoint path, hub id, named weights or 'random' (default: the bundled CamVid checkpoint)"
DATA_HELP = ("dataset: camvid, cityscapes, cityscapes:PATH (as downloaded) or folder:IMAGES:MASKS[:classes=FILE:"
             "image_suffix=S:mask_suffix=S:masks=colour:void=N]")
DATA_ROOT_HELP = "data directory (default: $EDGESEG_DATA)"
SPLIT_HELP = "split the result is measured on: train, val or test"
BUDGET_SPLIT_HELP = "split the INT8 accuracy budget is measured on: train, val or test (held out from the result)"
LIMIT_HELP = "use only the first N images of the split"
DEVICE_HELP = "auto (cuda when available, else cpu), cpu or cuda"
THREADS_HELP = "CPU threads for torch and ONNX Runtime (default: theirs, all cores)"
SIZE_HELP = "input size HEIGHTxWIDTH, e.g. 360x480 (default: the model's own)"
FORCE_HELP = "replace an existing output (a file, or a folder edgeseg wrote; never a folder of other files)"
JSON_HELP = "write the report as JSON here"
CARD_HELP = "model card (TOML) of a foreign model: 'edgeseg card init MODEL.onnx' writes one"
CLASSES_HELP = ("folder datasets: the class names, one per line ('name' or 'name R G B'), or a model card "
                "(default: the model's classes)")


def model(help: str = MODEL_HELP) -> Any:
    return typer.Option(..., "--model", "-m", metavar="MODEL", help=help)


def weights(default: str | None = None, help: str = WEIGHTS_HELP) -> Any:
    return typer.Option(default, "--weights", metavar="WEIGHTS", help=help)


def data(help: str = DATA_HELP) -> Any:
    return typer.Option("camvid", "--data", metavar="DATASET", help=help)


def data_root(help: str = DATA_ROOT_HELP) -> Any:
    return typer.Option(None, "--data-root", metavar="PATH", help=help)


def split(default: str | None = "test", help: str = SPLIT_HELP) -> Any:
    return typer.Option(default, "--split", metavar="SPLIT", help=help)


def budget_split(default: str = "val", help: str = BUDGET_SPLIT_HELP) -> Any:
    return typer.Option(default, "--budget-split", metavar="SPLIT", help=help)


def limit(help: str = LIMIT_HELP) -> Any:
    return typer.Option(None, "--limit", metavar="N", help=help)


def device(help: str = DEVICE_HELP) -> Any:
    return typer.Option("auto", "--device", metavar="DEVICE", help=help)


def threads(help: str = THREADS_HELP) -> Any:
    return typer.Option(None, "--threads", metavar="N", help=help)


def size(help: str = SIZE_HELP) -> Any:
    return typer.Option(None, "--size", metavar="HxW", help=help)


def force(help: str = FORCE_HELP) -> Any:
    return flag("--force", help)


def json_out(help: str = JSON_HELP) -> Any:
    return typer.Option(None, "--json", metavar="FILE", help=help)


def card(help: str = CARD_HELP) -> Any:
    return typer.Option(None, "--card", metavar="CARD", help=help)


def classes(help: str = CLASSES_HELP) -> Any:
    return typer.Option(None, "--classes", metavar="FILE", help=help)


def flag(name: str, help: str) -> Any:
    """An on/off option that takes no value (off by default), shown without a type."""
    return typer.Option(False, name, metavar="", help=help)


def old_spelling(name: str, new: str) -> Any:
    """The spelling an option had before the vocabulary was unified: still accepted, no longer shown."""
    return typer.Option(None, name, hidden=True, help=f"old spelling of {new}")


def _given_on_command_line(option: str) -> bool:
    """Whether the running command's `option` was typed (not its default), from click's parameter source."""
    try:
        from typer._click.globals import get_current_context  # typer 0.26+ vendors click
    except ImportError:
        from click import get_current_context
    ctx = get_current_context(silent=True)
    source = ctx.get_parameter_source(option.lstrip("-").replace("-", "_")) if ctx is not None else None
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def renamed(value: Any, old_value: Any, new: str, old: str) -> Any:
    """The option's value given under its new or its old spelling; both given with different values is refused."""
    if old_value is None:
        return value
    if _given_on_command_line(new) and value != old_value:
        raise UsageError(f"give {new} once ({old} is its old spelling)")
    return old_value


# Usage names for options a command declares without one: never the bare type (<str>, <int>, <bool>). Keys are
# click's type names (typer up to 0.25) and typer's own (0.26+, which vendors click and describes types itself).
_TYPE_METAVARS = {"integer": "N", "int": "N", "float": "NUMBER", "text": "TEXT", "str": "TEXT", "path": "PATH",
                  "Path": "PATH"}


def _type_name(param: Any) -> str:
    if hasattr(param, "type"):  # click's parameter types
        return getattr(param.type, "name", "")
    name = param.bare_type() if hasattr(param, "bare_type") else ""
    return name[len("list["):-1] if name.startswith("list[") else name


def _readable(param: Any) -> None:
    if param.metavar is not None:
        return
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        param.metavar = ""  # a flag takes no value: nothing to show
    elif param.param_type_name == "argument":
        param.metavar = param.name.upper()
    else:
        param.metavar = _TYPE_METAVARS.get(_type_name(param), "VALUE")


class _ReadableParams:
    """Gives every parameter, --help included, a readable usage name when the help is rendered."""

    def get_params(self, ctx):  # noqa: ANN001, ANN202 (click's signature; edgeseg does not import click)
        params = super().get_params(ctx)
        for param in params:
            _readable(param)
        return params


def readable_help(app: typer.Typer) -> None:
    """Use readable usage names in the help of every command and group of `app` (call after defining them)."""
    from typer.core import TyperCommand, TyperGroup

    class Command(_ReadableParams, TyperCommand):
        pass

    class Group(_ReadableParams, TyperGroup):
        pass

    def plain(cls: Any, base: type) -> bool:  # typer's own class (or its unset default), not one a command chose
        return getattr(cls, "value", cls) in (None, base)

    def visit(typer_app: typer.Typer) -> None:
        if plain(typer_app.info.cls, TyperGroup):
            typer_app.info.cls = Group
        for info in typer_app.registered_commands:
            if plain(info.cls, TyperCommand):
                info.cls = Command
        for group in typer_app.registered_groups:
            visit(group.typer_instance)

    visit(app)
