"""Artifacts, their JSON manifests, hashing and atomic writes.

Every stage writes its file under a temporary name and renames it on success, so an interrupted run never
leaves a half-written file that looks valid. The manifest beside it records what went in (with sha256),
the settings, library versions and measured checks, so any artifact can be traced and rebuilt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from edgeseg import __version__
from edgeseg.errors import UsageError

MANIFEST_SCHEMA = 1
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output directory {final.parent}: {exc.strerror}") from exc
    if not os.access(final.parent, os.W_OK):
        raise UsageError(f"output directory {final.parent} is not writable; choose another with --out")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; artifacts are meant to be shared
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write JSON atomically (sorted keys are not used: the writer's order is the reading order)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    return path


def read_text_file(path: str | os.PathLike, what: str = "file") -> str:
    """The text of a file the user named (a manifest, a TOML, a sidecar): UsageError, never a traceback, for a
    missing file, a folder, an unreadable or a binary file."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path} is a folder, not a file") from None
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path} is a binary file, not text") from None
    except OSError as exc:
        raise UsageError(f"{what} {path} cannot be read: {exc.strerror}") from None


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    text = read_text_file(path, "JSON file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON (line {exc.lineno}): {exc.msg}") from exc


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def library_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (missing ones are left out)."""
    found = {"edgeseg": __version__, "python": platform.python_version()}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class Artifact:
    """A file a stage produced, and the manifest that describes it."""

    path: Path
    manifest: dict = field(default_factory=dict)

    @property
    def manifest_path(self) -> Path:
        return manifest_path_for(self.path)


def manifest_path_for(path: str | os.PathLike) -> Path:
    from edgeseg.bundle_layout import sidecar_name

    path = Path(path)
    return path.with_name(sidecar_name(path.name))


def portable_path(path: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """A path as a manifest records it: relative to `base` (the folder the manifest lives in) when the file is
    inside it, so a moved or copied bundle still resolves; anything outside as the user gave it."""
    if base is not None:
        try:
            return Path(os.path.abspath(path)).relative_to(os.path.abspath(base)).as_posix()
        except ValueError:
            pass
    return str(path)


def input_record(path: str | os.PathLike, base: str | os.PathLike | None = None) -> dict:
    path = Path(path)
    return {"path": portable_path(path, base), "sha256": sha256_file(path), "bytes": path.stat().st_size}


def stage_manifest(stage: str, *, inputs: dict, settings: Any, checks: dict | None = None,
                   libraries: tuple[str, ...] = ()) -> dict:
    """The common manifest shape every stage writes beside its artifact."""
    if dataclasses.is_dataclass(settings):
        settings = dataclasses.asdict(settings)
    return {
        "schema": MANIFEST_SCHEMA,
        "stage": stage,
        "created": now_utc(),
        "inputs": inputs,
        "settings": settings,
        "checks": checks or {},
        "versions": library_versions(*libraries),
        "host": {"machine": platform.machine(), "system": platform.system(), "node": platform.node()},
    }
