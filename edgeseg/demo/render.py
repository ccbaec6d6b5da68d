"""Drawing the demo: colourise labels, compose overlay / mask / side-by-side, blur the background, legend and HUD.

Pure numpy/OpenCV functions on BGR uint8 images (OpenCV's order; the contract's palette is RGB and is converted
once, in `make_style`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np

from edgeseg.data.palettes import generic_palette
from edgeseg.errors import UsageError

if TYPE_CHECKING:
    from edgeseg.demo.stats import Rates

MODES = ("overlay", "mask", "side-by-side")
EFFECTS = ("none", "blur-background")
# Kept sharp by --effect blur-background unless --classes says otherwise (CamVid and Cityscapes names).
ROAD_USERS = ("Car", "Pedestrian", "Bicyclist", "car", "person", "rider", "bicycle", "motorcycle", "truck", "bus")
LABEL_VALUES = 256  # labels are uint8: a 256-entry lookup covers void/ignore values too
FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True, eq=False)
class RenderStyle:
    """What to draw, as lookup tables indexed by label value (so colouring a frame is one fancy-index)."""

    classes: tuple[str, ...]
    colours: np.ndarray  # 256x3 uint8 BGR; hidden classes and void are black
    visible: np.ndarray  # 256 bool: classes drawn (overlay tint, mask colour, legend)
    sharp: np.ndarray  # 256 bool: classes --effect blur-background keeps sharp
    mode: str = "overlay"
    alpha: float = 0.5
    effect: str = "none"

    @property
    def legend_entries(self) -> list[tuple[str, tuple[int, int, int]]]:
        return [(name, tuple(int(c) for c in self.colours[index]))
                for index, name in enumerate(self.classes) if self.visible[index]]


def class_ids(requested: Sequence[str], classes: Sequence[str]) -> tuple[int, ...]:
    """Class names (exact, else case-insensitive) -> ids; an unknown name is an error listing the model's classes."""
    lowered = {name.lower(): index for index, name in enumerate(classes)}
    ids = []
    for name in requested:
        name = name.strip()
        if not name:
            continue
        index = classes.index(name) if name in classes else lowered.get(name.lower())
        if index is None:
            raise UsageError(f"unknown class {name!r} in --classes; this model's classes are: {', '.join(classes)}")
        ids.append(index)
    return tuple(dict.fromkeys(ids))


def make_style(classes: Sequence[str], palette: Sequence[Sequence[int]], *, shown: Sequence[str] = (),
               mode: str = "overlay", alpha: float = 0.5, effect: str = "none") -> RenderStyle:
    """Build the lookup tables. `shown` (class names) limits what is drawn; with blur-background it also picks the
    classes kept sharp, which default to the road users of the model's label set."""
    classes = tuple(classes)
    if mode not in MODES:
        raise UsageError(f"unknown --mode {mode!r}; choose one of {', '.join(MODES)}")
    if effect not in EFFECTS:
        raise UsageError(f"unknown --effect {effect!r}; choose one of {', '.join(EFFECTS)}")
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"--alpha must be between 0 and 1, got {alpha}")
    if not classes:
        raise UsageError("the model carries no class names; re-export it with 'edgeseg export'")
    rgb = list(palette) if len(palette) >= len(classes) else list(generic_palette(len(classes)))

    chosen = class_ids(shown, classes)
    if not chosen and effect == "blur-background":
        chosen = class_ids([name for name in ROAD_USERS if name in classes], classes)
        if not chosen:
            raise UsageError("--effect blur-background keeps road users sharp, but this model has none of "
                             f"{', '.join(ROAD_USERS)}; pick the classes to keep with --classes")
    visible = np.zeros(LABEL_VALUES, bool)
    visible[list(chosen) if chosen else list(range(len(classes)))] = True
    sharp = np.zeros(LABEL_VALUES, bool)
    sharp[list(chosen)] = True

    colours = np.zeros((LABEL_VALUES, 3), np.uint8)
    colours[:len(classes)] = np.asarray(rgb[:len(classes)], np.uint8)[:, ::-1]  # RGB -> BGR
    colours[~visible] = 0
    return RenderStyle(classes, colours, visible, sharp, mode, alpha, effect)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Labels at another resolution -> the frame's (height, width); nearest, so no invented classes. (The demo's
    pipeline already maps the mask back with its fit, edgeseg.fit; this is for squeezed label maps.)"""
    if labels.shape[:2] == tuple(size):
        return labels
    return cv2.resize(labels, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def colourise(labels: np.ndarray, style: RenderStyle) -> np.ndarray:
    # np.take on the 256-row table is ~2x faster than fancy indexing for a frame-sized label map.
    return np.take(style.colours, labels, axis=0)


def overlay(frame: np.ndarray, labels: np.ndarray, style: RenderStyle) -> np.ndarray:
    """Tint visible classes with their colour at style.alpha; hidden classes and void keep the camera image."""
    tinted = cv2.addWeighted(frame, 1.0 - style.alpha, colourise(labels, style), style.alpha, 0.0)
    visible = style.visible[labels]
    if visible.all():
        return tinted
    return np.where(visible[..., None], tinted, frame)


def blur_background(frame: np.ndarray, labels: np.ndarray, style: RenderStyle) -> np.ndarray:
    """Keep style.sharp classes as they are and blur everything else (a 'portrait mode' for road users)."""
    height, width = frame.shape[:2]
    # Blur a quarter-size copy and scale it back: a strong blur at a fraction of the cost, which matters on a
    # Jetson's CPU where rendering shares the cores with capture and pre-processing.
    small = cv2.resize(frame, (max(1, width // 4), max(1, height // 4)), interpolation=cv2.INTER_AREA)
    kernel = max(3, (min(small.shape[:2]) // 12) | 1)
    blurred = cv2.resize(cv2.GaussianBlur(small, (kernel, kernel), 0), (width, height),
                         interpolation=cv2.INTER_LINEAR)
    return np.where(style.sharp[labels][..., None], frame, blurred)


def compose(frame: np.ndarray, labels: np.ndarray, style: RenderStyle) -> np.ndarray:
    """The demo image for one frame (without legend and HUD). `labels` may be at model resolution."""
    labels = resize_labels(labels, frame.shape[:2])
    base = blur_background(frame, labels, style) if style.effect == "blur-background" else frame
    if style.mode == "mask":
        return colourise(labels, style)
    if style.mode == "side-by-side":
        return np.hstack([base, colourise(labels, style)])
    return overlay(base, labels, style)


def _text_metrics(image_height: int, rows: int) -> tuple[int, float, int]:
    """Row height, font scale and thickness that stay legible from 240p to 1080p and fit `rows` rows."""
    row = int(np.clip(image_height // 24, 12, 30))
    row = max(8, min(row, (image_height - 8) // max(rows, 1)))
    return row, row / 34.0, 1 if row < 24 else 2


def _darken(image: np.ndarray, top: int, left: int, bottom: int, right: int, amount: float = 0.55) -> None:
    """Dim a box in place so white text reads on any scene."""
    top, left = max(top, 0), max(left, 0)
    region = image[top:bottom, left:right]
    region[:] = cv2.convertScaleAbs(region, alpha=1.0 - amount)  # uint8 in, uint8 out: no float64 copy


def draw_legend(image: np.ndarray, entries: Sequence[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    """Colour swatches and class names in the top-right corner (BGR colours)."""
    if not entries:
        return image
    row, scale, thickness = _text_metrics(image.shape[0], len(entries))
    widest = max(cv2.getTextSize(name, FONT, scale, thickness)[0][0] for name, _ in entries)
    pad = max(3, row // 4)
    box_width = pad * 3 + row + widest
    left = max(0, image.shape[1] - box_width - pad)
    top = pad
    _darken(image, top, left, top + row * len(entries) + pad, left + box_width)
    for line, (name, colour) in enumerate(entries):
        y = top + pad // 2 + row * line
        cv2.rectangle(image, (left + pad, y + 2), (left + pad + row - 4, y + row - 2), colour, thickness=-1)
        cv2.putText(image, name, (left + pad * 2 + row, y + row - pad), FONT, scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)
    return image


def draw_hud(image: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """Heads-up text (FPS, per-stage milliseconds) in the top-left corner."""
    if not lines:
        return image
    row, scale, thickness = _text_metrics(image.shape[0], len(lines))
    pad = max(3, row // 4)
    width = max(cv2.getTextSize(line, FONT, scale, thickness)[0][0] for line in lines) + 2 * pad
    _darken(image, pad, pad, pad + row * len(lines) + pad, pad + width)
    for number, line in enumerate(lines):
        y = pad + row * (number + 1)
        cv2.putText(image, line, (pad * 2, y), FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return image


# Short stage names keep the HUD inside a 480-pixel-wide frame.
HUD_STAGE_NAMES = {"capture": "cap", "preprocess": "pre", "infer": "infer", "postprocess": "post", "render": "draw"}


def hud_lines(rates: Rates, backend: str, dropped: int) -> list[str]:
    """The HUD text for a `Rates` (edgeseg.demo.stats): "--" until something was measured, never a made-up 0.0."""
    fps = "--" if rates.fps is None else f"{rates.fps:5.1f}"
    if rates.stage_ms is None:
        stages = "  ".join(f"{name} --" for name in HUD_STAGE_NAMES.values())
    else:
        stages = "  ".join(f"{HUD_STAGE_NAMES.get(name, name)} {value:.1f}" for name, value in rates.stage_ms.items())
    over = rates.label.replace(" frames", "")  # "last 30": short enough for a 480-pixel-wide frame
    return [f"{fps} FPS ({over})  {backend}  dropped {dropped}", f"ms: {stages}"]
