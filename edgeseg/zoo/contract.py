"""The preprocessing contract a model carries from the zoo to the engine.

It travels in the zoo entry, the checkpoint JSON, the ONNX metadata and the engine sidecar, so no later stage
re-declares mean/std, channel order, input size or class names. No torch import: the device side reads it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edgeseg.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# How a frame of another shape is fitted to the input: letterbox (scale to fit, pad with the mean, pad cut out of
# the mask), crop (scale to cover, centre crop) or resize (squeeze: distorts any other aspect ratio).
FITS = ("letterbox", "crop", "resize")
# What fills a letterbox: the frame mirrored at its edge (reflect), or the flat dataset mean (mean). A flat band
# is nothing a model saw in training: SegFormer-B0 on 2:1 CamVid frames letterboxed to 4:3 scores 65% pixel
# accuracy with a mean band and 77% with a mirrored one (squeezed: 79%). Either way the pad is cut from the mask.
PADS = ("reflect", "mean")


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
    fit: str = "letterbox"  # one of FITS: aspect-preserving unless a model was trained on squeezed images
    stride: int = 32  # the model's output stride: dynamic-size inputs are rounded to a multiple of it
    pad: str = "reflect"  # one of PADS: what fills the letterbox

    def __post_init__(self) -> None:
        if self.fit not in FITS:
            raise UsageError(f"unknown fit {self.fit!r}; choose one of {', '.join(FITS)}")
        if self.pad not in PADS:
            raise UsageError(f"unknown pad {self.pad!r}; choose one of {', '.join(PADS)}")
        if self.stride < 1:
            raise UsageError(f"stride must be at least 1, got {self.stride}")

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
        return _to_blob(rgb, self.mean, self.std, swap_channels=self.channel_order != "RGB")

    def normalize_bgr(self, bgr: np.ndarray) -> np.ndarray:
        """The same from a BGR image (OpenCV's order: camera frames, video decoders), without a colour conversion."""
        return _to_blob(bgr, self.mean, self.std, swap_channels=self.channel_order == "RGB")


# OpenCV >= 4.8 does HWC->CHW, the channel swap, the float conversion and the per-channel (x - mean) * scale in
# one pass: about 5x faster than the numpy chain at 360x480, which matters for a demo on a Jetson's CPU. Older
# OpenCV (JetPack 5 ships 4.5) and builds without the dnn module take the numpy path, which gives the same values.
_BLOB_WITH_PARAMS = getattr(getattr(cv2, "dnn", None), "blobFromImageWithParams", None)


def _to_blob(image: np.ndarray, mean: Sequence[float], std: Sequence[float], *, swap_channels: bool) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3:
        raise UsageError(f"expected an HxWx3 image, got shape {tuple(image.shape)}")
    if _BLOB_WITH_PARAMS is not None and image.dtype == np.uint8:
        height, width = image.shape[:2]
        # mean and scale are given in the output's channel order; the blob is (x - 255*mean) / (255*std).
        params = cv2.dnn.Image2BlobParams(scalefactor=tuple(1.0 / (255.0 * s) for s in std), size=(width, height),
                                          mean=tuple(255.0 * m for m in mean), swapRB=swap_channels,
                                          ddepth=cv2.CV_32F)
        return _BLOB_WITH_PARAMS(np.ascontiguousarray(image), params)
    ordered = image[..., ::-1] if swap_channels else image
    scaled = ordered.astype(np.float32) / 255.0
    scaled -= np.asarray(mean, dtype=np.float32)
    scaled /= np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(scaled.transpose(2, 0, 1)[None])
