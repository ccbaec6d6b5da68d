"""Deployment targets: one TOML file per board or GPU in edgeseg/targets/, validated when read.

A target says what the hardware can do (compute capability, DLA cores, precisions, sparsity) and which TensorRT
it ships with, so a build plan can refuse an impossible request before TensorRT is ever imported. The module is
not called `targets.py` because the data directory `edgeseg/targets/` already takes that name.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, replace
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Callable

from edgeseg.errors import UsageError

KINDS = ("jetson", "gpu", "cpu")
PRECISIONS = ("fp32", "fp16", "int8", "fp8")
_VERSION = re.compile(r"^\d+(\.\d+)*$")
_CAPABILITY = re.compile(r"^\d+\.\d+$")
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class PowerMode:
    """An nvpmodel mode. Mode ids differ between modules and JetPack releases, so they are not stored:
    `sudo nvpmodel -q --verbose` on the board lists them."""

    name: str
    watts: float | None = None  # None: no power budget (MAXN)
    note: str = ""


@dataclass(frozen=True)
class JetPackRelease:
    version: str
    tensorrt: str  # the TensorRT this JetPack ships


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    kind: str  # "jetson" | "gpu" | "cpu"
    aliases: tuple[str, ...] = ()
    compute_capability: str | None = None  # None for the CPU, and for 'cuda' until read from the device
    gpu_memory_gb: float | None = None
    dla_cores: int = 0
    precisions: tuple[str, ...] = ()
    sparsity: bool = False
    default_tensorrt: str | None = None
    tensorrt_versions: tuple[str, ...] = ()
    jetpack: tuple[JetPackRelease, ...] = ()
    default_workspace_mb: int | None = None
    default_input: str = "360x480"
    power_modes: tuple[PowerMode, ...] = ()
    from_device: bool = False  # properties are read from the local GPU when the target is loaded
    source: str = ""  # the TOML file it came from
    resolved_from: str | None = None  # the alias or probe that led here, e.g. "agx-orin"
    family: str | None = None  # set on a family's host stand-in ('jetson-orin'): the module is resolved on the device

    @property
    def input_size(self) -> tuple[int, int]:
        height, width = _SIZE.match(self.default_input).groups()
        return int(height), int(width)

    @property
    def builds_engines(self) -> bool:
        return self.kind != "cpu"

    def supports(self, precision: str) -> bool:
        return precision in self.precisions

    def tensorrt_for_jetpack(self, jetpack: str) -> str:
        for release in self.jetpack:
            if release.version == jetpack:
                return release.tensorrt
        known = ", ".join(release.version for release in self.jetpack) or "none"
        raise UsageError(f"target {self.name} has no JetPack {jetpack}; known releases: {known}")


# ---------------------------------------------------------------------------------------------------------------
# Reading and validating one file

def _fail(where: str, message: str) -> UsageError:
    return UsageError(f"target file {where}: {message}")


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def _string(value, where, key):
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"'{key}' must be a non-empty string, got {_type_name(value)}")
    return value


def _boolean(value, where, key):
    if not isinstance(value, bool):
        raise _fail(where, f"'{key}' must be true or false, got {_type_name(value)}")
    return value


def _count(value, where, key):  # bool is an int subclass in Python; TOML true is not a count
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(where, f"'{key}' must be a whole number >= 0, got {value!r}")
    return value


def _positive_int(value, where, key):
    if _count(value, where, key) == 0:
        raise _fail(where, f"'{key}' must be greater than 0")
    return value


def _positive_number(value, where, key):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise _fail(where, f"'{key}' must be a number greater than 0, got {value!r}")
    return float(value)


def _string_list(value, where, key):
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise _fail(where, f"'{key}' must be a list of strings, got {value!r}")
    return tuple(value)


def _kind(value, where, key):
    if value not in KINDS:
        raise _fail(where, f"'{key}' must be one of {', '.join(KINDS)}, got {value!r}")
    return value


def _matching(pattern, description):
    """A validator for strings of one pattern; `description` completes "'key' must be ..."."""
    def check(value, where, key):
        if not isinstance(value, str) or not pattern.match(value):
            raise _fail(where, f"'{key}' must be {description}, got {value!r}")
        return value
    return check


_capability = _matching(_CAPABILITY, 'a string like "8.7"')
_version = _matching(_VERSION, 'a version string like "10.3"')
_size = _matching(_SIZE, '"HEIGHTxWIDTH", e.g. "360x480"')


def _versions(value, where, key):
    return tuple(_version(item, where, key) for item in _string_list(value, where, key))


def _precisions(value, where, key):
    found = _string_list(value, where, key)
    unknown = [item for item in found if item not in PRECISIONS]
    if unknown:
        raise _fail(where, f"'{key}' has unknown precision {unknown[0]!r}; use {', '.join(PRECISIONS)}")
    return found


def _jetpack(value, where, key):
    if not isinstance(value, dict):
        raise _fail(where, f"'{key}' must be a table of JetPack version = TensorRT version, got {_type_name(value)}")
    return tuple(JetPackRelease(_version(jetpack, where, key), _version(trt, where, f"{key}.{jetpack}"))
                 for jetpack, trt in value.items())


_POWER_MODE_KEYS = {"name": _string, "watts": _positive_number, "note": _string}


def _power_modes(value, where, key):
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _fail(where, f"'{key}' must be an array of tables ([[{key}]]), got {_type_name(value)}")
    modes = []
    for index, table in enumerate(value):
        here = f"{key}[{index}]"
        _reject_unknown(table, _POWER_MODE_KEYS, where, prefix=f"{here}.")
        if "name" not in table:
            raise _fail(where, f"'{here}' needs a name")
        modes.append(PowerMode(**{field: check(table[field], where, f"{here}.{field}")
                                  for field, check in _POWER_MODE_KEYS.items() if field in table}))
    return tuple(modes)


# TOML key -> checker that returns the value to store. Dataclass fields not listed here are set by the loader.
_SCHEMA: dict[str, Callable[[Any, str, str], Any]] = {
    "name": _string,
    "description": _string,
    "kind": _kind,
    "aliases": _string_list,
    "compute_capability": _capability,
    "gpu_memory_gb": _positive_number,
    "dla_cores": _count,
    "precisions": _precisions,
    "sparsity": _boolean,
    "default_tensorrt": _version,
    "tensorrt_versions": _versions,
    "jetpack": _jetpack,
    "default_workspace_mb": _positive_int,
    "default_input": _size,
    "power_modes": _power_modes,
    "from_device": _boolean,
}

# What each kind must say about itself, and what makes no sense for it.
_DEVICE_KEYS = ("compute_capability", "gpu_memory_gb", "precisions")
_REQUIRED = {
    "jetson": ("name", "description", "kind", *_DEVICE_KEYS, "default_tensorrt", "default_workspace_mb", "jetpack"),
    "gpu": ("name", "description", "kind", *_DEVICE_KEYS, "default_tensorrt", "default_workspace_mb"),
    "cpu": ("name", "description", "kind", "precisions"),
}
_FORBIDDEN = {
    "jetson": ("from_device",),
    "gpu": ("jetpack", "power_modes"),
    "cpu": ("compute_capability", "gpu_memory_gb", "dla_cores", "sparsity", "default_tensorrt", "tensorrt_versions",
            "jetpack", "default_workspace_mb", "power_modes", "from_device"),
}
# A target read from the device must not claim device properties in its file: they would be silently replaced.
_FROM_DEVICE_FORBIDDEN = (*_DEVICE_KEYS, "dla_cores", "sparsity")


def _reject_unknown(table: dict, known, where: str, prefix: str = "") -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"did you mean '{prefix}{close[0]}'?" if close else f"known keys: {', '.join(known)}"
            raise _fail(where, f"unknown key '{prefix}{key}'; {hint}")


def parse_target(data: dict, where: str) -> Target:
    """Validate the parsed TOML of one target and build the Target (`where` names the file in errors)."""
    _reject_unknown(data, _SCHEMA, where)
    if "kind" not in data:
        raise _fail(where, f"missing required key 'kind' ({', '.join(KINDS)})")
    kind = _kind(data["kind"], where, "kind")
    from_device = data.get("from_device", False)
    required = _REQUIRED[kind]
    if from_device is True:
        required = tuple(key for key in required if key not in _DEVICE_KEYS)
    for key in required:
        if key not in data:
            raise _fail(where, f"missing required key '{key}' for a {kind} target")
    for key in _FORBIDDEN[kind]:
        if key in data:
            raise _fail(where, f"'{key}' does not apply to a {kind} target; remove it")
    values = {key: check(data[key], where, key) for key, check in _SCHEMA.items() if key in data}
    for name in (values["name"], *values.get("aliases", ())):
        if not _NAME.match(name):
            raise _fail(where, f"{name!r} is not a usable target name; use lower-case letters, digits and '-'")
    if values.get("from_device"):
        for key in _FROM_DEVICE_FORBIDDEN:
            if key in data:
                raise _fail(where, f"'{key}' is read from the device when from_device = true; remove it")
    precisions = values.get("precisions", ())
    if precisions and "fp32" not in precisions:
        raise _fail(where, "'precisions' must include fp32")
    versions = values.get("tensorrt_versions", ())
    if versions and values.get("default_tensorrt") not in versions:
        raise _fail(where, f"default_tensorrt {values.get('default_tensorrt')!r} is not in tensorrt_versions")
    for release in values.get("jetpack", ()):
        if versions and release.tensorrt not in versions:
            raise _fail(where, f"JetPack {release.version} ships TensorRT {release.tensorrt}, "
                               "which is missing from tensorrt_versions")
    if kind == "jetson" and not values.get("power_modes"):
        raise _fail(where, "a jetson target needs its [[power_modes]]")
    return Target(**values, source=where)


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
        raise _fail(str(path), f"name {target.name!r} does not match the file name; rename one of them")
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
                raise _fail(target.source, f"alias {alias!r} is already taken")
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
        target = target_from_device(target, probe_cuda_device(), installed_tensorrt())
    return target


def _families() -> dict:
    from edgeseg.target_family import builtin_families

    return builtin_families()


def load_family(name: str):
    """The TargetFamily named `name` (or an alias), None when it is not a family."""
    return _families().get(name.strip().lower())


def _unknown_target_message(name: str, targets: dict, aliases: dict) -> str:
    close = difflib.get_close_matches(name.lower(), [*targets, *aliases], n=3, cutoff=0.5)
    if close:
        return f"unknown target {name!r}; did you mean {' or '.join(close)}? ('edgeseg targets' lists them all)"
    return f"unknown target {name!r}; choose one of: {', '.join(targets)} (or a path to a .toml file)"


# ---------------------------------------------------------------------------------------------------------------
# 'cuda': the local GPU

@dataclass(frozen=True)
class CudaDevice:
    name: str
    compute_capability: str  # "8.6"
    memory_gb: float


def target_from_device(template: Target, device: CudaDevice, tensorrt: str | None = None) -> Target:
    """Fill a from_device target with what the device can do (pure: the probe is done by the caller)."""
    capability = tuple(int(part) for part in device.compute_capability.split("."))
    precisions = ["fp32"]
    if capability >= (5, 3):
        precisions.append("fp16")
    if capability >= (6, 1):  # DP4A; tensor-core INT8 from Turing on
        precisions.append("int8")
    if capability >= (8, 9):  # Ada and Hopper FP8 tensor cores
        precisions.append("fp8")
    return replace(
        template,
        description=f"{device.name} (read from the local device)",
        compute_capability=device.compute_capability,
        gpu_memory_gb=round(device.memory_gb, 1),
        precisions=tuple(precisions),
        sparsity=capability >= (8, 0),  # 2:4 structured sparsity arrived with Ampere
        default_tensorrt=tensorrt or template.default_tensorrt,
        resolved_from=f"cuda device 0: {device.name}",
    )


def probe_cuda_device() -> CudaDevice:
    """The first CUDA device, read with pycuda if it is installed, else with nvidia-smi."""
    device = _probe_pycuda() or _probe_nvidia_smi()
    if device is None:
        raise UsageError("no CUDA device is visible (checked pycuda and nvidia-smi); "
                         "pick a named target from 'edgeseg targets' or fix the NVIDIA driver")
    return device


def _probe_pycuda() -> CudaDevice | None:
    try:
        import pycuda.driver as cuda  # optional: the 'trt' extra

        cuda.init()
        if cuda.Device.count() == 0:
            return None
        gpu = cuda.Device(0)
        major, minor = gpu.compute_capability()
        return CudaDevice(gpu.name(), f"{major}.{minor}", gpu.total_memory() / 2**30)
    except Exception:  # ImportError, or pycuda.driver.Error when there is no driver or device
        return None


def _probe_nvidia_smi() -> CudaDevice | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvidia_smi(done.stdout) if done.returncode == 0 else None


def parse_nvidia_smi(output: str) -> CudaDevice | None:
    """The first line of `nvidia-smi --query-gpu=name,compute_cap,memory.total --format=csv,noheader,nounits`."""
    for line in output.splitlines():
        parts = [part.strip() for part in line.rsplit(",", 2)]  # GPU names may contain commas; the numbers do not
        if len(parts) == 3 and _CAPABILITY.match(parts[1]):
            try:
                return CudaDevice(parts[0], parts[1], float(parts[2]) / 1024)  # MiB -> GiB
            except ValueError:
                return None
    return None


def installed_tensorrt() -> str | None:
    """major.minor of the installed TensorRT Python package, read from its metadata (TensorRT is not imported)."""
    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11"):
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        return ".".join(version.split(".")[:2])
    return None
