"""What a deployment target is: the Target dataclass and the validation of one target file's parsed TOML.

A target says what the hardware can do (compute capability, DLA cores, precisions, sparsity) and which TensorRT
it ships with, so a build plan can refuse an impossible request before TensorRT is ever imported. Pure: no file
is read and nothing is probed here (edgeseg.target.loading reads the files, engine.host probes the GPU), so the
pure build plan (engine.plan) can import it.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace
from collections.abc import Collection
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
# Validating one file's parsed TOML

def target_file_error(where: str, message: str) -> UsageError:
    return UsageError(f"target file {where}: {message}")


_fail = target_file_error  # short, for the many checks below


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def _string(value: object, where: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"'{key}' must be a non-empty string, got {_type_name(value)}")
    return value


def _boolean(value: object, where: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, f"'{key}' must be true or false, got {_type_name(value)}")
    return value


def _count(value: object, where: str, key: str) -> int:  # bool is an int subclass in Python; TOML true is not a count
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(where, f"'{key}' must be a whole number >= 0, got {value!r}")
    return value


def _positive_int(value: object, where: str, key: str) -> int:
    count = _count(value, where, key)
    if count == 0:
        raise _fail(where, f"'{key}' must be greater than 0")
    return count


def _positive_number(value: object, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise _fail(where, f"'{key}' must be a number greater than 0, got {value!r}")
    return float(value)


def _string_list(value: object, where: str, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise _fail(where, f"'{key}' must be a list of strings, got {value!r}")
    return tuple(value)


def _kind(value: object, where: str, key: str) -> str:
    if value not in KINDS:
        raise _fail(where, f"'{key}' must be one of {', '.join(KINDS)}, got {value!r}")
    return value


def _matching(pattern: re.Pattern[str], description: str) -> Callable[[object, str, str], str]:
    """A validator for strings of one pattern; `description` completes "'key' must be ..."."""
    def check(value: object, where: str, key: str) -> str:
        if not isinstance(value, str) or not pattern.match(value):
            raise _fail(where, f"'{key}' must be {description}, got {value!r}")
        return value
    return check


_capability = _matching(_CAPABILITY, 'a string like "8.7"')
_version = _matching(_VERSION, 'a version string like "10.3"')
_size = _matching(_SIZE, '"HEIGHTxWIDTH", e.g. "360x480"')


def _versions(value: object, where: str, key: str) -> tuple[str, ...]:
    return tuple(_version(item, where, key) for item in _string_list(value, where, key))


def _precisions(value: object, where: str, key: str) -> tuple[str, ...]:
    found = _string_list(value, where, key)
    unknown = [item for item in found if item not in PRECISIONS]
    if unknown:
        raise _fail(where, f"'{key}' has unknown precision {unknown[0]!r}; use {', '.join(PRECISIONS)}")
    return found


def _jetpack(value: object, where: str, key: str) -> tuple[JetPackRelease, ...]:
    if not isinstance(value, dict):
        raise _fail(where, f"'{key}' must be a table of JetPack version = TensorRT version, got {_type_name(value)}")
    return tuple(JetPackRelease(_version(jetpack, where, key), _version(trt, where, f"{key}.{jetpack}"))
                 for jetpack, trt in value.items())


_POWER_MODE_KEYS = {"name": _string, "watts": _positive_number, "note": _string}


def _power_modes(value: object, where: str, key: str) -> tuple[PowerMode, ...]:
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


def _reject_unknown(table: dict, known: Collection[str], where: str, prefix: str = "") -> None:
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


# ---------------------------------------------------------------------------------------------------------------
# 'cuda': a target filled from the local GPU's facts (the probe itself is engine.host.probe_cuda_device)

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
