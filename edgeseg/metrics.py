"""Streaming confusion matrix and the segmentation metrics derived from it (numpy only, no torch).

Rows are ground truth, columns predictions. Pixels whose label is the ignore index take no part.
A class absent from both ground truth and predictions has no IoU (NaN) and is left out of the mean,
the convention of mmsegmentation and the Cityscapes scripts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, target: np.ndarray, prediction: np.ndarray) -> None:
        target = np.asarray(target).ravel().astype(np.int64)
        prediction = np.asarray(prediction).ravel().astype(np.int64)
        if target.shape != prediction.shape:
            raise ValueError(f"target has {target.size} pixels but prediction {prediction.size}")
        keep = target != self.ignore_index
        target, prediction = target[keep], prediction[keep]
        if target.size and (target.max() >= self.num_classes or target.min() < 0):
            raise ValueError(f"target labels must lie in 0..{self.num_classes - 1} or be the ignore index")
        if prediction.size and (prediction.max() >= self.num_classes or prediction.min() < 0):
            raise ValueError(f"predicted labels must lie in 0..{self.num_classes - 1}")
        self.matrix += np.bincount(target * self.num_classes + prediction,
                                   minlength=self.num_classes ** 2).reshape(self.num_classes, self.num_classes)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.matrix += other.matrix

    def scores(self) -> "SegmentationScores":
        return scores_from_confusion(self.matrix)


@dataclass(frozen=True)
class SegmentationScores:
    miou: float
    pixel_accuracy: float
    mean_class_accuracy: float
    per_class_iou: tuple[float, ...]  # NaN where the class appears nowhere
    per_class_accuracy: tuple[float, ...]
    pixels: int

    def to_dict(self, class_names: tuple[str, ...] | None = None) -> dict:
        names = class_names or tuple(str(i) for i in range(len(self.per_class_iou)))
        return {
            "miou": self.miou,
            "pixel_accuracy": self.pixel_accuracy,
            "mean_class_accuracy": self.mean_class_accuracy,
            "per_class_iou": {name: _none_if_nan(v) for name, v in zip(names, self.per_class_iou)},
            "per_class_accuracy": {name: _none_if_nan(v) for name, v in zip(names, self.per_class_accuracy)},
            "pixels": self.pixels,
        }


def _none_if_nan(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def scores_from_confusion(matrix: np.ndarray) -> SegmentationScores:
    matrix = np.asarray(matrix, dtype=np.float64)
    true_positive = np.diag(matrix)
    gt_total = matrix.sum(axis=1)
    predicted_total = matrix.sum(axis=0)
    union = gt_total + predicted_total - true_positive
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, true_positive / union, np.nan)
        class_accuracy = np.where(gt_total > 0, true_positive / gt_total, np.nan)
    total = matrix.sum()
    return SegmentationScores(
        miou=float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        pixel_accuracy=float(true_positive.sum() / total) if total else float("nan"),
        mean_class_accuracy=float(np.nanmean(class_accuracy)) if np.isfinite(class_accuracy).any() else float("nan"),
        per_class_iou=tuple(float(v) for v in iou),
        per_class_accuracy=tuple(float(v) for v in class_accuracy),
        pixels=int(total),
    )
