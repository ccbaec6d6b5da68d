"""Reading deployment targets: one TOML file per board or GPU in edgeseg/targets/ (package data), by name,
alias, family (edgeseg.target_family) or path, validated by edgeseg.target.schema.

'cuda' is filled from the local GPU when it is asked for (engine.host probes it), never when targets are listed.
"""

from __future__ import annotations

import difflib
import functools
import os
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import tomllib

from edgeseg.errors import UsageError
from edgeseg.target.schema import Target, parse_target, target_file_error, target_from_device

if TYPE_CHECKING:
    from edgeseg.target_family import TargetFamily


def read_target_toml(path: Path, missing: str, where: str | None = None) -> Target:
    """Parse and validate a target file; `missing` is the message when it does not exist."""
    from edgeseg.manifest import read_text_file

    if not path.exists():
        raise UsageError(missing)
    try:
        data = tomllib.loads(read_text_file(path, "target file"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"target file {path} is not valid TOML: {exc}") from None
    return parse_target(data, where or str(path))


def load_target_file(path: str | os.PathLike) -> Target:
    """Read one target file. Its `name` must match the file name, which is how it is asked for."""
    path = Path(path)
    target = read_target_toml(path, f"target file {path} does not exist; see 'edgeseg targets' for the built-in ones")
    if target.name != path.stem:
        raise target_file_error(str(path), f"name {target.name!r} does not match the file name; rename one of them")
    return target


# ---------------------------------------------------------------------------------------------------------------
# The built-in targets

def _builtin_dir() -> Path:
    # Package data installed beside this module (setuptools package-data: targets/*.toml); never zipped.
    return Path(str(resources.files("edgeseg").joinpath("targets")))


@functools.lru_cache(maxsize=1)
def _registry() -> tuple[dict[str, Target], dict[str, str]]:
    """name -> Target and alias -> name, for every built-in file; read once per process."""
    targets: dict[str, Target] = {}
    aliases: dict[str, str] = {}
    for path in sorted(_builtin_dir().glob("*.toml")):
        target = load_target_file(path)
        targets[target.name] = target
    for target in targets.values():
        for alias in target.aliases:
            if alias in targets or alias in aliases:
                raise target_file_error(target.source, f"alias {alias!r} is already taken")
            aliases[alias] = target.name
    return targets, aliases


def list_targets() -> list[Target]:
    """Every built-in target, Jetsons first, then GPUs, then 'cuda' and 'cpu'; 'cuda' is not probed here."""
    order = {"jetson": 0, "gpu": 1, "cpu": 2}
    return sorted(_registry()[0].values(), key=lambda t: (order[t.kind], t.from_device, t.name))


def _looks_like_path(text: str) -> bool:
    return text.endswith(".toml") or os.sep in text or (os.altsep is not None and os.altsep in text)


def load_target(name_or_path: str | os.PathLike) -> Target:
    """A target by name ('jetson-orin-nano'), alias ('jetson-orin') or path to a .toml file.

    'cuda' is read from the local device here, when it is asked for, not when targets are listed.
    """
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, Path) or _looks_like_path(text):
        target = load_target_file(text)
    else:
        key = text.strip().lower()
        targets, aliases = _registry()
        if key in targets:
            target = targets[key]
        elif key in aliases:
            target = replace(targets[aliases[key]], resolved_from=key)
        elif key in _families():
            from edgeseg.target_family import family_target

            target = family_target(_families()[key], targets)
        else:
            raise UsageError(_unknown_target_message(text, targets, {**aliases, **_families()}))
    if target.from_device:
        from edgeseg.engine import host  # imported here: engine.host imports this package's schema

        target = target_from_device(target, host.probe_cuda_device(), host.installed_tensorrt())
    return target


def _families() -> dict[str, TargetFamily]:
    from edgeseg.target_family import builtin_families

    return builtin_families()


def load_family(name: str) -> TargetFamily | None:
    """The TargetFamily named `name` (or an alias), None when it is not a family."""
    return _families().get(name.strip().lower())


def _unknown_target_message(name: str, targets: dict, aliases: dict) -> str:
    close = difflib.get_close_matches(name.lower(), [*targets, *aliases], n=3, cutoff=0.5)
    if close:
        return f"unknown target {name!r}; did you mean {' or '.join(close)}? ('edgeseg targets' lists them all)"
    return f"unknown target {name!r}; choose one of: {', '.join(targets)} (or a path to a .toml file)"
