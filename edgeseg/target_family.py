"""Target families: 'jetson-orin' is any Orin module, so it is resolved on the device, not guessed on the host.

A family file (edgeseg/targets/families/*.toml) lists modules as ordered rules: a rule names a member target
and matches a device by its model text (/proc/device-tree/model), its module part number
(/proc/device-tree/compatible) and, for memory variants, an upper memory bound; it may override the member's
gpu_memory_gb, dla_cores and default_workspace_mb (Orin NX 8GB has one DLA core, not two).

On the host a family stands in as a Target with what every member shares (compute capability, precisions,
TensorRT) and no DLA, so a plan made for it runs on every member; `edgeseg engine build .` (or build_engine.sh,
which carries the same rules as shell) resolves the module on the device and plans again with that module's
workspace, DLA cores and power modes. Resolution is a pure function of `DeviceFacts`; only `read_device_facts`
reads the device.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeseg.errors import UsageError

if TYPE_CHECKING:
    from edgeseg.target.schema import Target

FAMILY_KIND = "family"
MODULE_ENV = "EDGESEG_MODULE"  # set to a rule id to skip detection (a carrier board with its own model string)
_OVERRIDES = ("gpu_memory_gb", "dla_cores", "default_workspace_mb", "power_modes")


@dataclass(frozen=True)
class ModuleRule:
    id: str
    target: str
    model: tuple[str, ...] = ()
    compatible: tuple[str, ...] = ()
    max_memory_gb: float | None = None
    overrides: tuple[tuple[str, Any], ...] = ()
    note: str = ""

    def matches(self, facts: DeviceFacts) -> bool:
        named = any(text in (facts.model or "") for text in self.model) or any(
            part in (facts.compatible or "") for part in self.compatible)
        if not named:
            return False
        if self.max_memory_gb is None:
            return True
        return facts.memory_gb is not None and facts.memory_gb <= self.max_memory_gb


@dataclass(frozen=True)
class TargetFamily:
    name: str
    description: str
    modules: tuple[ModuleRule, ...]
    aliases: tuple[str, ...] = ()
    source: str = ""

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(rule.target for rule in self.modules))

    def rule(self, rule_id: str) -> ModuleRule:
        for rule in self.modules:
            if rule.id == rule_id:
                return rule
        raise UsageError(f"{MODULE_ENV}={rule_id} is not a module of {self.name}; "
                         f"choose one of {', '.join(rule.id for rule in self.modules)}")


@dataclass(frozen=True)
class DeviceFacts:
    model: str | None  # /proc/device-tree/model, e.g. "NVIDIA Jetson Orin Nano Developer Kit"
    compatible: str | None  # /proc/device-tree/compatible, NUL-separated entries joined by spaces
    memory_gb: float | None  # MemTotal in GiB

    def describe(self) -> str:
        memory = f"{self.memory_gb:.1f} GiB" if self.memory_gb is not None else "memory unknown"
        return f"model {self.model!r}, {memory}"


# ---------------------------------------------------------------------------------------------------------------
# Reading family files

def is_family(data: dict) -> bool:
    return data.get("kind") == FAMILY_KIND


def parse_family(data: dict, where: str) -> TargetFamily:
    def fail(message: str) -> UsageError:
        return UsageError(f"family file {where}: {message}")

    for key in ("name", "description"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise fail(f"'{key}' must be a non-empty string")
    rules = data.get("module")
    if not isinstance(rules, list) or not rules:
        raise fail("needs at least one [[module]] rule")
    parsed = []
    for index, rule in enumerate(rules, 1):
        if not isinstance(rule, dict) or not isinstance(rule.get("id"), str) or not isinstance(rule.get("target"), str):
            raise fail(f"module rule {index} needs an 'id' and a 'target'")
        model, compatible = rule.get("model", []), rule.get("compatible", [])
        if not all(isinstance(text, str) and text for text in [*model, *compatible]) or not (model or compatible):
            raise fail(f"module {rule['id']}: 'model' and 'compatible' are lists of strings, and one is needed")
        unknown = set(rule) - {"id", "target", "model", "compatible", "max_memory_gb", "note", *_OVERRIDES}
        if unknown:
            raise fail(f"module {rule['id']}: unknown key {sorted(unknown)[0]!r}")
        limit = rule.get("max_memory_gb")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
            raise fail(f"module {rule['id']}: max_memory_gb must be a number greater than 0")
        parsed.append(ModuleRule(id=rule["id"], target=rule["target"], model=tuple(model),
                                 compatible=tuple(compatible), max_memory_gb=limit,
                                 overrides=tuple((key, tuple(rule[key]) if isinstance(rule[key], list) else rule[key])
                                                 for key in _OVERRIDES if key in rule),
                                 note=rule.get("note", "")))
    ids = [rule.id for rule in parsed]
    if len(set(ids)) != len(ids):
        raise fail("module ids must be unique")
    return TargetFamily(name=data["name"], description=data["description"], modules=tuple(parsed),
                        aliases=tuple(data.get("aliases", ())), source=where)


def read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}") from None


def _families_dir() -> Path:
    return Path(str(resources.files("edgeseg").joinpath("targets", "families")))


@functools.lru_cache(maxsize=1)
def builtin_families() -> dict[str, TargetFamily]:
    """name and alias -> family, for every built-in family file."""
    found: dict[str, TargetFamily] = {}
    for path in sorted(_families_dir().glob("*.toml")):
        family = parse_family(read_toml(path), str(path))
        for key in (family.name, *family.aliases):
            found[key] = family
    return found


# ---------------------------------------------------------------------------------------------------------------
# The host's stand-in, and the module on the device

def family_target(family: TargetFamily, members: dict[str, Target]) -> Target:
    """A Target for planning on the host: what every member shares, no DLA (decided per module on the device)."""
    targets = [members[name] for name in family.members]
    capabilities = {target.compute_capability for target in targets}
    if len(capabilities) != 1:
        raise UsageError(f"family {family.name} mixes compute capabilities {sorted(capabilities)}; an engine "
                         "cannot serve them all")
    first = targets[0]
    common = [p for p in first.precisions if all(p in target.precisions for target in targets)]
    versions = [v for v in first.tensorrt_versions if all(v in target.tensorrt_versions for target in targets)]
    jetpack = tuple(release for release in first.jetpack if all(release in target.jetpack for target in targets))
    workspaces = [dict(rule.overrides).get("default_workspace_mb", members[rule.target].default_workspace_mb)
                  for rule in family.modules]
    members_text = ", ".join(family.members[:-1]) + f" or {family.members[-1]}" if len(family.members) > 1 \
        else family.members[0]
    return dataclasses.replace(
        first, name=family.name, description=family.description, aliases=family.aliases,
        gpu_memory_gb=min(dict(rule.overrides).get("gpu_memory_gb", members[rule.target].gpu_memory_gb)
                          for rule in family.modules), dla_cores=0, precisions=tuple(common),
        sparsity=all(target.sparsity for target in targets), tensorrt_versions=tuple(versions), jetpack=jetpack,
        default_workspace_mb=min(w for w in workspaces if w), power_modes=(), source=family.source,
        resolved_from=f"family {family.name}: the module ({members_text}) is resolved on the device",
        family=family.name)


def resolve_module(family: TargetFamily, facts: DeviceFacts, forced: str | None = None) -> ModuleRule:
    if forced:
        return family.rule(forced)
    for rule in family.modules:
        if rule.matches(facts):
            return rule
    raise UsageError(f"this device ({facts.describe()}) matches no module of {family.name} "
                     f"({', '.join(rule.id for rule in family.modules)}); if it is one of them on a carrier board "
                     f"with its own model string, set {MODULE_ENV}=<module>")


def module_target(rule: ModuleRule, base: Target, family: TargetFamily, facts: DeviceFacts | None) -> Target:
    """The member target with the rule's overrides, saying how it was resolved."""
    how = facts.describe() if facts else f"{MODULE_ENV}={rule.id}"
    overrides = dict(rule.overrides)
    if "power_modes" in overrides:  # names like "40W" carry their budget; MAXN has none
        from edgeseg.target.schema import PowerMode

        overrides["power_modes"] = tuple(PowerMode(name, float(name[:-1]) if re.fullmatch(r"\d+W", name) else None)
                                         for name in overrides["power_modes"])
    description = base.description + (f" ({rule.note})" if rule.note and overrides else "")
    return dataclasses.replace(base, **overrides, description=description,
                               resolved_from=f"{family.name} resolved on this device ({how}) as {rule.id}")


def read_device_facts(proc: str | os.PathLike | None = None) -> DeviceFacts:
    """The device tree's model and compatible strings and MemTotal (EDGESEG_PROC replaces /proc, for tests)."""
    root = Path(proc or os.environ.get("EDGESEG_PROC", "/proc"))

    def text(path: Path) -> str | None:
        try:
            return path.read_bytes().decode(errors="replace")
        except OSError:
            return None

    model = text(root / "device-tree" / "model")
    compatible = text(root / "device-tree" / "compatible")
    memory = None
    for line in (text(root / "meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            memory = int(line.split()[1]) / 2**20
    return DeviceFacts(model=model.strip("\0 \n") if model else None,
                       compatible=" ".join(filter(None, compatible.split("\0"))) if compatible else None,
                       memory_gb=memory)


def render_resolver_shell(family: TargetFamily) -> list[str]:
    """A bash function `edgeseg_module` that prints the rule id for this device, with the same rules and order as
    resolve_module (EDGESEG_MODULE and EDGESEG_PROC are honoured the same way)."""
    lines = [
        "edgeseg_module() {",
        '    if [ -n "${EDGESEG_MODULE:-}" ]; then echo "$EDGESEG_MODULE"; return 0; fi',
        '    local proc="${EDGESEG_PROC:-/proc}" model compatible mem_kb',
        """    model="$(tr -d '\\0' < "$proc/device-tree/model" 2>/dev/null || true)\"""",
        """    compatible="$(tr '\\0' ' ' < "$proc/device-tree/compatible" 2>/dev/null || true)\"""",
        """    mem_kb="$(awk '/^MemTotal:/ {print $2}' "$proc/meminfo" 2>/dev/null || true)\"""",
        '    mem_kb="${mem_kb:-0}"',
    ]
    for rule in family.modules:
        tests = [f'_edgeseg_has "$model" {_sh(text)}' for text in rule.model]
        tests += [f'_edgeseg_has "$compatible" {_sh(part)}' for part in rule.compatible]
        condition = "{ " + " || ".join(tests) + "; }"
        if rule.max_memory_gb is not None:
            limit_kb = int(rule.max_memory_gb * 2**20)
            condition += f' && [ "$mem_kb" -gt 0 ] && [ "$mem_kb" -le {limit_kb} ]'
        lines.append(f"    if {condition}; then echo {rule.id}; return 0; fi")
    lines += [
        f'    echo "build_engine.sh: this device (model \'$model\') matches no module of {family.name}; '
        f'set EDGESEG_MODULE to one of: {" ".join(rule.id for rule in family.modules)}" >&2',
        "    return 1",
        "}",
        '_edgeseg_has() { case "$1" in *"$2"*) return 0 ;; esac; return 1; }',
    ]
    return lines


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def resolve_family_here(name: str) -> Target:
    """The module target of family `name` for this device (edgeseg build run on the Jetson itself)."""
    from edgeseg.target.loading import load_family, load_target

    family = load_family(name)
    forced = os.environ.get(MODULE_ENV)
    facts = None if forced else read_device_facts()
    rule = resolve_module(family, facts, forced)
    return module_target(rule, load_target(rule.target), family, facts)
