"""Where edgeseg may write. Every --out, --json and --save goes through here BEFORE any long work starts.

The rule: edgeseg never deletes or overwrites anything it did not create.
- A file output that already exists is replaced only with --force (the user named it and asked).
- A folder output (a build bundle, a train run, bench results) may be an absent or empty folder, or one that
  edgeseg wrote earlier (recognised by its own manifest), and then only with --force. A folder holding anything
  else is refused even with --force: replacing it would delete the user's files.
- A folder where a file is expected, or a file where a folder is expected, is refused; so is a location whose
  nearest existing parent is not a writable folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from edgeseg.errors import UsageError


def _read_json_object(path: Path) -> dict | None:
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def is_bundle(folder: Path) -> bool:
    """A bundle `edgeseg build` wrote: its manifest.json says stage 'build'."""
    from edgeseg.bundle_layout import MANIFEST_FILE

    manifest = _read_json_object(folder / MANIFEST_FILE)
    return bool(manifest) and manifest.get("stage") == "build"


def is_train_run(folder: Path) -> bool:
    """A run folder `edgeseg train` wrote: log.jsonl and/or checkpoints with their edgeseg sidecars."""
    names = {child.name for child in folder.iterdir()}
    return "log.jsonl" in names or any(_read_json_object(folder / f"{name}.safetensors.json") is not None
                                       for name in ("best", "last"))


def is_bench_results(folder: Path) -> bool:
    """A results folder `edgeseg bench` wrote: results.json with the bench's rows and environment."""
    results = _read_json_object(folder / "results.json")
    return bool(results) and "rows" in results and "env" in results


FOLDER_KINDS: dict[str, tuple[str, Callable[[Path], bool]]] = {
    "bundle": ("build bundle", is_bundle),
    "train": ("train run", is_train_run),
    "bench": ("bench results folder", is_bench_results),
}


def _check_parent(path: Path, option: str) -> None:
    """The nearest existing ancestor must be a writable folder (missing folders in between are created later)."""
    parent = path.parent
    while not parent.exists():
        if parent.is_symlink():  # a dangling link: mkdir would fail later, after the work
            raise UsageError(f"{option} {path}: {parent} is a broken link")
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: {parent} is not writable; choose another location")


def check_output_file(path: str | os.PathLike, *, force: bool = False, option: str = "--out") -> Path:
    """Refuse a file output that cannot or must not be written; call before any long work."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; give a file name")
    if path.exists() or path.is_symlink():
        if not force:
            raise UsageError(f"{option} {path} already exists; add --force to replace it")
        if not os.access(path.parent, os.W_OK):
            raise UsageError(f"{option} {path}: {path.parent} is not writable; choose another location")
    _check_parent(path, option)
    return path


def check_output_folder(path: str | os.PathLike, kind: str, *, force: bool = False, option: str = "--out",
                        reuse: bool = False) -> Path:
    """Refuse a folder output edgeseg must not write into. `kind` is a key of FOLDER_KINDS; `reuse` accepts an
    earlier output of that kind without --force (train --resume continues its own run)."""
    path = Path(path)
    label, recognise = FOLDER_KINDS[kind]
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file; give a folder")
    if path.is_dir() and any(path.iterdir()):
        if not recognise(path):
            raise UsageError(f"{option} {path} is a folder that edgeseg did not write (it holds "
                             f"{_describe(path)}); edgeseg never replaces files it did not create: give a new or "
                             f"empty folder")
        if not (force or reuse):
            raise UsageError(f"{option} {path} holds an earlier {label}; add --force to replace it")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"{option} {path} is not writable; choose another location")
    _check_parent(path, option)
    return path


def _describe(folder: Path) -> str:
    names = sorted(child.name for child in folder.iterdir())
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return shown
