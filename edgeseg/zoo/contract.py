"""The preprocessing contract a model carries from the zoo to the engine.

It travels in the zoo entry, the checkpoint JSON, the ONNX metadata and the engine sidecar, so no later stage
re-declares mean/std, channel order, input size or class names. No torch import: the device side reads it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np

from edgeseg.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB uint8 image becomes the model's float input: resize, then (x/255 - mean) / std, NCHW."""

    input_size: tuple[int, int]  # (height, width)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    interpolation: str = "bilinear"
    classes: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    ignore_index: int = 255

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UsageError(f"unknown preprocessing fields {sorted(unknown)}")
        data = dict(data)
        data["input_size"] = tuple(data["input_size"])
        for key in ("mean", "std", "classes"):
            if key in data:
                data[key] = tuple(data[key])
        if "palette" in data:
            data["palette"] = tuple(tuple(colour) for colour in data["palette"])
        return cls(**data)

    def with_size(self, size: tuple[int, int]) -> "Preprocessing":
        return dataclasses.replace(self, input_size=tuple(size))

    def normalize(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB (already at input size) -> 1x3xHxW float32, the model's input."""
        image = rgb if self.channel_order == "RGB" else rgb[..., ::-1]
        scaled = image.astype(np.float32) / 255.0
        scaled -= np.asarray(self.mean, dtype=np.float32)
        scaled /= np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(scaled.transpose(2, 0, 1)[None])
