"""Augmentations for training and the fixed resize for evaluation, on numpy arrays with OpenCV.

Images are HxWx3 uint8 RGB and masks HxW uint8 (255 = ignore); masks are always resized with nearest
neighbour so no label is invented at boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edgeseg.data.datasets import IGNORE


@dataclass(frozen=True)
class AugmentConfig:
    crop_size: tuple[int, int] = (256, 320)  # (height, width)
    scale_range: tuple[float, float] = (0.75, 1.5)
    hflip: bool = True
    colour_jitter: float = 0.3  # max relative change of brightness, contrast and saturation


def resize_pair(image: np.ndarray, mask: np.ndarray | None, size: tuple[int, int]):
    height, width = size
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        if mask is not None:
            mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return image, mask


def _colour_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    work = image.astype(np.float32)
    brightness = 1 + rng.uniform(-strength, strength)
    contrast = 1 + rng.uniform(-strength, strength)
    saturation = 1 + rng.uniform(-strength, strength)
    work *= brightness
    mean = work.mean()
    work = (work - mean) * contrast + mean
    grey = work.mean(axis=2, keepdims=True)
    work = (work - grey) * saturation + grey
    return np.clip(work, 0, 255).astype(np.uint8)


def augment(image: np.ndarray, mask: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator):
    """Random scale, crop (padding with ignore where the scaled image is smaller), flip and colour jitter."""
    scale = rng.uniform(*cfg.scale_range)
    height, width = image.shape[:2]
    new_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    image, mask = resize_pair(image, mask, new_size)

    crop_h, crop_w = cfg.crop_size
    pad_h, pad_w = max(0, crop_h - image.shape[0]), max(0, crop_w - image.shape[1])
    if pad_h or pad_w:
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        mask = cv2.copyMakeBorder(mask, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=IGNORE)
    top = rng.integers(0, image.shape[0] - crop_h + 1)
    left = rng.integers(0, image.shape[1] - crop_w + 1)
    image = image[top:top + crop_h, left:left + crop_w]
    mask = mask[top:top + crop_h, left:left + crop_w]

    if cfg.hflip and rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if cfg.colour_jitter > 0:
        image = _colour_jitter(image, cfg.colour_jitter, rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)
