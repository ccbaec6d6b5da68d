"""The model registry, in the style of timm's: families register builders; callers ask by name.

An entry is plain data plus a builder; building imports torch and the family's library lazily, so listing
names and reading contracts stays cheap.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from collections.abc import Iterable
from typing import TYPE_CHECKING, Callable

from edgeseg.data.palettes import CAMVID, LabelSet
from edgeseg.errors import UsageError
from edgeseg.zoo.contract import Preprocessing

if TYPE_CHECKING:
    from torch import nn

# Modules that register families; imported on first registry use.
_FAMILY_MODULES = ("edgeseg.zoo.segformer", "edgeseg.zoo.torchvision_seg", "edgeseg.zoo.smp")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str  # architecture family as users know it: SegFormer, FCN, U-Net, DeepLabV3, ...
    library: str  # the library its users train with
    builder: Callable[[int], nn.Module]  # num_classes -> a model returning NxCxHxW logits at input size
    # The layer(s) whose outputs are the num_classes logits, named as in the built model: the one place that says
    # what a new label set replaces (zoo.weights), what keeps its outputs when pruning, what 2:4 sparsity skips.
    classifier: tuple[str, ...]
    input_size: tuple[int, int] = (360, 480)  # default (height, width): CamVid's native resolution
    label_set: LabelSet = CAMVID
    # Named weights a user can ask for with --weights NAME, e.g. {"cityscapes": "hf:nvidia/..."}.
    named_weights: dict[str, str] = field(default_factory=dict)
    notes: str = ""

    def preprocessing(self, label_set: LabelSet | None = None) -> Preprocessing:
        labels = label_set or self.label_set
        return Preprocessing(input_size=self.input_size, classes=labels.classes, palette=labels.palette,
                             ignore_index=labels.ignore_index)


_REGISTRY: dict[str, ModelEntry] = {}
_loaded = False


def register_model(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def _load_families() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _FAMILY_MODULES:
            importlib.import_module(module)


def list_models() -> list[ModelEntry]:
    _load_families()
    return list(_REGISTRY.values())


def get_entry(name: str) -> ModelEntry:
    _load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = closest_names(name, _REGISTRY)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"unknown model {name!r}{hint} (see 'edgeseg models')") from None


def closest_names(word: str, candidates: Iterable[str], count: int = 3) -> list[str]:
    """Best fuzzy matches, ties broken alphabetically (difflib alone prefers the last of equals: b5 over b0)."""
    scored = [(difflib.SequenceMatcher(None, word, c).ratio(), c) for c in candidates]
    return [c for score, c in sorted(scored, key=lambda item: (-item[0], item[1])) if score >= 0.6][:count]


def create_model(name: str, num_classes: int | None = None) -> nn.Module:
    """Build an untrained model (random init, no download) with `num_classes` outputs."""
    entry = get_entry(name)
    model = entry.builder(num_classes or entry.label_set.num_classes)
    model.edgeseg_name = name
    return model
