"""The accepted values of every command-line option, checked in one place before any work starts.

Each command calls `check(...)` with its option values; a value outside its domain is refused with one line that
names the option, the value and what is accepted. Stage configs keep their own checks for library callers; this is
what the CLI guarantees before it loads a model or reads a dataset.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from edgeseg.errors import UsageError

SPLITS = ("train", "val", "test")
TORCH_DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "int8")
QUANT_PROFILES = ("cpu", "trt")
CALIB_METHODS = ("minmax", "entropy", "percentile")
CALIB_STRATEGIES = ("random", "class-balanced", "sequence-spread")
DYNAMIC_AXES = ("batch", "height", "width")
PRUNE_IMPORTANCE = ("l1", "l2", "bn-scale", "taylor")
SPARSITY = ("2:4",)
DEMO_MODES = ("overlay", "mask", "side-by-side")
DEMO_EFFECTS = ("none", "blur-background")
MIN_OPSET, MAX_OPSET = 17, 23


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def one_of(option: str, value: Any, allowed: tuple) -> None:
    if value is not None and value not in allowed:
        raise UsageError(f"{option} {value!r} is not accepted; choose one of: {', '.join(map(str, allowed))}")


def each_one_of(option: str, values: Iterable[Any], allowed: tuple) -> None:
    for value in values:
        one_of(option, value, allowed)


def at_least(option: str, value: float | None, minimum: float) -> None:
    if value is not None and (isinstance(value, float) and math.isnan(value) or value < minimum):
        raise UsageError(f"{option} {_shown(value)} is out of range; it must be at least {_shown(minimum)}")


def positive(option: str, value: float | None) -> None:
    if value is not None and (math.isnan(value) or math.isinf(value) or value <= 0):
        raise UsageError(f"{option} {_shown(value)} is out of range; it must be greater than 0")


def between(option: str, value: float | None, low: float, high: float, *, open_low: bool = False,
            open_high: bool = False) -> None:
    if value is None:
        return
    too_low = value <= low if open_low else value < low
    too_high = value >= high if open_high else value > high
    if math.isnan(value) or too_low or too_high:
        interval = f"{'(' if open_low else '['}{_shown(low)}, {_shown(high)}{')' if open_high else ']'}"
        raise UsageError(f"{option} {_shown(value)} is out of range; it must be in {interval}")


def port(option: str, value: int | None) -> None:
    between(option, value, 1, 65535)


def count(option: str, value: int | None) -> None:
    """An image, frame, epoch or batch count where 0 would mean 'do nothing and report success'."""
    at_least(option, value, 1)
