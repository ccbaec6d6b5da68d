"""Fitting an image of any shape to the model's input, and mapping the model's output back onto the image exactly.

The one owner of that geometry (where the content goes, the pad, the crop region, mapping an output back): the
demo uses it for BGR camera frames, evaluation and calibration for RGB dataset images, so the accuracy measured
and the INT8 scales calibrated are those of frames fitted exactly as the deployed demo fits them. No torch.

A 1024x512 street frame squeezed into a 360x480 input shows the model a scene 1.5x narrower than anything it was
trained on, and it mislabels it. So the default keeps the aspect ratio:

- letterbox: scale the frame to fit inside the input and pad the rest, by default with the frame mirrored at
  its edge (a flat band of the dataset mean, the contract's `pad: mean`, is nothing the model saw in training and
  costs accuracy next to it); the pad rows/columns are cut out of the predicted mask before it is scaled back, so
  the pad can never show up as a class;
- crop: scale the frame to cover the input and cut the centre; the uncovered edges of the frame get no label
  (void: the overlay leaves them as the camera image);
- resize: squeeze, as before (for models trained on squeezed images).

A model with dynamic spatial axes needs none of that: it runs at the frame's own aspect ratio, with about as many
pixels as its contract's input size, each side rounded to the model's stride.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import cv2
import numpy as np

from edgeseg.errors import UsageError
from edgeseg.zoo.contract import FITS, Preprocessing

INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "bicubic": cv2.INTER_CUBIC,
                 "area": cv2.INTER_AREA}
VOID = 255  # label for frame pixels the model did not see (crop edges); drawn as the camera image


@dataclass(frozen=True)
class Box:
    top: int
    left: int
    height: int
    width: int

    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


@dataclass(frozen=True)
class Placement:
    """How one frame size maps to the model input: `region` of the frame is scaled into `content` of the input."""

    frame_size: tuple[int, int]  # (height, width)
    input_size: tuple[int, int]  # the (height, width) the model runs at for this frame
    region: Box  # part of the frame the model sees (all of it, except with crop)
    content: Box  # where that part lands in the input (all of it, except with letterbox)
    fit: str

    @property
    def padded(self) -> bool:
        return (self.content.height, self.content.width) != self.input_size

    @property
    def cropped(self) -> bool:
        return (self.region.height, self.region.width) != self.frame_size


def is_dynamic(input_shape: Sequence[object]) -> bool:
    """True when the model's NCHW input has symbolic (or unknown) height and width."""
    return len(input_shape) == 4 and not all(isinstance(side, int) and side > 0 for side in input_shape[2:])


def dynamic_input_size(frame_size: tuple[int, int], budget: tuple[int, int], stride: int) -> tuple[int, int]:
    """The frame's aspect ratio at about budget[0] * budget[1] pixels, each side a multiple of `stride`."""
    height, width = frame_size
    scale = math.sqrt(budget[0] * budget[1] / (height * width))
    return (max(stride, round(height * scale / stride) * stride), max(stride, round(width * scale / stride) * stride))


def plan_fit(frame_size: tuple[int, int], preprocessing: Preprocessing, fit: str | None = None,
             dynamic: bool = False) -> Placement:
    """Where a frame of `frame_size` goes in the input; `fit` None means the contract's choice."""
    fit = fit or preprocessing.fit
    if fit not in FITS:
        raise UsageError(f"unknown --fit {fit!r}; choose one of {', '.join(FITS)}")
    height, width = (int(side) for side in frame_size)
    if dynamic:
        input_size = dynamic_input_size((height, width), preprocessing.input_size, preprocessing.stride)
    else:
        input_size = tuple(int(side) for side in preprocessing.input_size)
    in_height, in_width = input_size
    whole_frame, whole_input = Box(0, 0, height, width), Box(0, 0, in_height, in_width)
    if fit == "resize" or (height, width) == input_size:
        return Placement((height, width), input_size, whole_frame, whole_input, fit)
    if fit == "letterbox":
        scale = min(in_height / height, in_width / width)
        fitted_height = min(in_height, max(1, round(height * scale)))
        fitted_width = min(in_width, max(1, round(width * scale)))
        content = Box((in_height - fitted_height) // 2, (in_width - fitted_width) // 2, fitted_height, fitted_width)
        return Placement((height, width), input_size, whole_frame, content, fit)
    scale = max(in_height / height, in_width / width)  # crop: cover the input, cut the frame's centre
    seen_height = min(height, max(1, round(in_height / scale)))
    seen_width = min(width, max(1, round(in_width / scale)))
    region = Box((height - seen_height) // 2, (width - seen_width) // 2, seen_height, seen_width)
    return Placement((height, width), input_size, region, whole_input, fit)


def fit_frame(image: np.ndarray, placement: Placement, preprocessing: Preprocessing,
              channel_order: Literal["BGR", "RGB"] = "BGR") -> np.ndarray:
    """HxWx3 uint8 image (a BGR camera frame, or an RGB dataset image with channel_order="RGB") -> the model's
    1x3xHxW input: crop, resize (on the fewer pixels), pad, normalise."""
    normalize = preprocessing.normalize_bgr if channel_order == "BGR" else preprocessing.normalize
    region, content = placement.region, placement.content
    if placement.cropped:
        image = image[region.slices()]
    if image.shape[:2] != (content.height, content.width):
        image = cv2.resize(image, (content.width, content.height),
                           interpolation=INTERPOLATION.get(preprocessing.interpolation, cv2.INTER_LINEAR))
    if not placement.padded:
        return normalize(image)
    in_height, in_width = placement.input_size
    if preprocessing.pad == "reflect":
        image = cv2.copyMakeBorder(image, content.top, in_height - content.top - content.height,
                                   content.left, in_width - content.left - content.width, cv2.BORDER_REFLECT_101)
        return normalize(image)
    # The mean: pad after normalising, where 0 is exactly the mean (a uint8 colour could only approximate it).
    batch = np.zeros((1, 3, in_height, in_width), np.float32)
    batch[(..., *content.slices())] = normalize(image)
    return batch


def output_content(output: np.ndarray, placement: Placement) -> np.ndarray:
    """The part of a model output (1xKxhxw logits, or hxw labels; at the input size or below, for a model whose
    output is smaller than its input) that shows the image, i.e. without the letterbox pad."""
    if not placement.padded:
        return output
    content = placement.content
    in_height, in_width = placement.input_size
    out_height, out_width = output.shape[-2:]
    ys, xs = out_height / in_height, out_width / in_width
    # Round both edges (not the length), so the pad cut above and below stays symmetric at any output scale.
    y0, x0 = round(content.top * ys), round(content.left * xs)
    y1 = max(y0 + 1, round((content.top + content.height) * ys))
    x1 = max(x0 + 1, round((content.left + content.width) * xs))
    return output[..., y0:y1, x0:x1]


def seen_region(mask: np.ndarray, placement: Placement) -> np.ndarray:
    """The part of the image (or its ground-truth mask) the model saw: all of it, except the edges a crop cut."""
    return mask[placement.region.slices()]


def labels_to_frame(labels: np.ndarray, placement: Placement) -> np.ndarray:
    """The model's HxW labels -> labels for the whole frame: the pad is cut off first, nearest-neighbour scaling
    (no invented classes), and frame pixels the model never saw (crop edges) are VOID."""
    labels = output_content(labels, placement)
    region = placement.region
    if labels.shape[:2] != (region.height, region.width):
        labels = cv2.resize(labels, (region.width, region.height), interpolation=cv2.INTER_NEAREST)
    if not placement.cropped:
        return np.ascontiguousarray(labels)
    full = np.full(placement.frame_size, VOID, np.uint8)
    full[region.slices()] = labels
    return full
