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


def resize_pair(image: np.ndarray, mask: np.ndarray | None,
                size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    height, width = size
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        if mask is not None:
            mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return image, mask


def _colour_jitter(image: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    work = image.astype(np.float32)
    work *= brightness
    mean = work.mean()
    work = (work - mean) * contrast + mean
    grey = work.mean(axis=2, keepdims=True)
    work = (work - grey) * saturation + grey
    return np.clip(work, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class AugmentDraw:
    """The random choices of one augmentation. Drawing them needs only the image's shape, so distributed
    training can draw a whole global batch's choices in one process's order and apply only its own share."""

    scale: float
    top: int
    left: int
    flip: bool
    jitter: tuple[float, float, float] | None  # brightness, contrast, saturation factors


def draw_augment(shape: tuple[int, ...], cfg: AugmentConfig, rng: np.random.Generator) -> AugmentDraw:
    scale = rng.uniform(*cfg.scale_range)
    height, width = _scaled_size(shape, scale)
    crop_h, crop_w = cfg.crop_size
    top = int(rng.integers(0, max(height, crop_h) - crop_h + 1))
    left = int(rng.integers(0, max(width, crop_w) - crop_w + 1))
    flip = bool(cfg.hflip and rng.random() < 0.5)
    strength = cfg.colour_jitter
    jitter = tuple(1 + rng.uniform(-strength, strength) for _ in range(3)) if strength > 0 else None
    return AugmentDraw(scale, top, left, flip, jitter)


def _scaled_size(shape: tuple[int, ...], scale: float) -> tuple[int, int]:
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def apply_augment(image: np.ndarray, mask: np.ndarray, draw: AugmentDraw,
                  cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    image, mask = resize_pair(image, mask, _scaled_size(image.shape, draw.scale))
    crop_h, crop_w = cfg.crop_size
    pad_h, pad_w = max(0, crop_h - image.shape[0]), max(0, crop_w - image.shape[1])
    if pad_h or pad_w:
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        mask = cv2.copyMakeBorder(mask, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=IGNORE)
    image = image[draw.top:draw.top + crop_h, draw.left:draw.left + crop_w]
    mask = mask[draw.top:draw.top + crop_h, draw.left:draw.left + crop_w]
    if draw.flip:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if draw.jitter is not None:
        image = _colour_jitter(image, *draw.jitter)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def augment(image: np.ndarray, mask: np.ndarray, cfg: AugmentConfig,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random scale, crop (padding with ignore where the scaled image is smaller), flip and colour jitter."""
    return apply_augment(image, mask, draw_augment(image.shape, cfg, rng), cfg)
