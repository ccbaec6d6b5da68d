"""How an image of any shape is brought to the model's input size (the contract's `fit`), and how the model's
output maps back onto the image, so evaluation and calibration see frames the way the deployed model does.

  resize     stretch to the input size (the default; the whole image, aspect ratio not kept)
  letterbox  scale to fit inside, keep the aspect ratio, pad the rest with the mean colour (normalises to 0)
  crop       scale to cover, keep the aspect ratio, cut the centre (the image's borders are not seen)
No torch; OpenCV only.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Placement:
    """Where the image content lies in the model input (`inner`, input pixels) and which part of the original
    image it shows (`source`, image pixels); each is (top, left, height, width)."""

    input_size: tuple[int, int]
    inner: tuple[int, int, int, int]
    source: tuple[int, int, int, int]


def fit_image(image: np.ndarray, size: tuple[int, int], fit: str = "resize",
              mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
              pad: str = "mean") -> tuple[np.ndarray, Placement]:
    """HxWx3 uint8 -> (image at `size`, placement). The letterbox pad is `mean` (0-1, the image's channel order)
    or, with pad="reflect", the image mirrored at its edge: the contract's `pad`, as the demo fills it
    (edgeseg/demo/fit.py), so evaluation and calibration see frames as the deployed demo does."""
    height, width = image.shape[:2]
    out_h, out_w = size
    if fit == "resize" or (height, width) == (out_h, out_w):
        resized = image if (height, width) == (out_h, out_w) else cv2.resize(image, (out_w, out_h),
                                                                             interpolation=cv2.INTER_LINEAR)
        return resized, Placement(size, (0, 0, out_h, out_w), (0, 0, height, width))
    if fit == "letterbox":
        scale = min(out_h / height, out_w / width)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
        inner = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        if pad == "reflect":
            canvas = cv2.copyMakeBorder(inner, top, out_h - top - new_h, left, out_w - left - new_w,
                                        cv2.BORDER_REFLECT_101)
        else:
            canvas = np.empty((out_h, out_w, 3), np.uint8)
            canvas[:] = np.round(np.asarray(mean) * 255).astype(np.uint8)
            canvas[top:top + new_h, left:left + new_w] = inner
        return canvas, Placement(size, (top, left, new_h, new_w), (0, 0, height, width))
    if fit == "crop":
        scale = max(out_h / height, out_w / width)
        src_h, src_w = min(height, round(out_h / scale)), min(width, round(out_w / scale))
        top, left = (height - src_h) // 2, (width - src_w) // 2
        region = image[top:top + src_h, left:left + src_w]
        return (cv2.resize(region, (out_w, out_h), interpolation=cv2.INTER_LINEAR),
                Placement(size, (0, 0, out_h, out_w), (top, left, src_h, src_w)))
    raise ValueError(f"unknown fit {fit!r}")


def output_inner(output: np.ndarray, placement: Placement) -> np.ndarray:
    """The part of a model output (1xKxhxw logits or 1xhxw / hxw labels, at the input size or below) that shows
    the image, i.e. without letterbox padding."""
    top, left, inner_h, inner_w = placement.inner
    in_h, in_w = placement.input_size
    if (top, left, inner_h, inner_w) == (0, 0, in_h, in_w):
        return output
    out_h, out_w = output.shape[-2:]
    sy, sx = out_h / in_h, out_w / in_w
    y0, x0 = int(round(top * sy)), int(round(left * sx))
    y1, x1 = max(y0 + 1, int(round((top + inner_h) * sy))), max(x0 + 1, int(round((left + inner_w) * sx)))
    return output[..., y0:y1, x0:x1]


def source_region(mask: np.ndarray, placement: Placement) -> np.ndarray:
    """The part of the image's mask the model saw (all of it, except the borders a crop cut off)."""
    top, left, height, width = placement.source
    return mask[top:top + height, left:left + width]


def rgb_mean(preprocessing) -> tuple[float, float, float]:
    """A contract's mean in RGB order (it is kept in the model's channel order): the letterbox pad colour."""
    mean = tuple(preprocessing.mean)
    return mean[::-1] if preprocessing.channel_order == "BGR" else mean
