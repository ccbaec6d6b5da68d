"""Accuracy of a row against its reference row (the FP32 torch model): mIoU drop, per-class IoU change, and
agreement, i.e. the mIoU of the row's predictions scored against the reference's predictions as ground truth.

The agreement is what tells a deployment apart from a different model: two models can share an mIoU and still
label different pixels; a faithful INT8 engine agrees with its FP32 original on nearly every pixel.
"""

from __future__ import annotations

from pathlib import Path

import cv2

from edgeseg.metrics import ConfusionMatrix


def accuracy_against(row_accuracy: dict, reference_accuracy: dict) -> dict:
    """miou_drop (points, positive = worse than the reference) and per-class IoU change (points)."""
    change = {}
    for name, iou in row_accuracy["per_class_iou"].items():
        before = reference_accuracy["per_class_iou"].get(name)
        change[name] = None if iou is None or before is None else (iou - before) * 100
    return {"miou_drop": (reference_accuracy["miou"] - row_accuracy["miou"]) * 100, "per_class_iou_change": change}


def prediction_agreement(row_dir: Path, reference_dir: Path, num_classes: int) -> dict | None:
    """mIoU and pixel agreement of the label maps in `row_dir` against those in `reference_dir`; None when the two
    rows did not predict the same images."""
    row_files = sorted(Path(row_dir).glob("*.png"))
    reference_files = sorted(Path(reference_dir).glob("*.png"))
    if not row_files or [p.name for p in row_files] != [p.name for p in reference_files]:
        return None
    # Predictions never hold the ignore index, so every pixel counts.
    confusion = ConfusionMatrix(num_classes, ignore_index=-1)
    for row_file, reference_file in zip(row_files, reference_files):
        predicted = cv2.imread(str(row_file), cv2.IMREAD_UNCHANGED)
        reference = cv2.imread(str(reference_file), cv2.IMREAD_UNCHANGED)
        if predicted is None or reference is None or predicted.shape != reference.shape:
            return None
        confusion.update(reference, predicted)
    scores = confusion.scores()
    return {"agreement_miou": scores.miou, "pixel_agreement": scores.pixel_accuracy,
            "images": len(row_files)}

