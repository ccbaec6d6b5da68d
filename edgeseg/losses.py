"""Losses for unbalanced segmentation classes: weighted cross-entropy, OHEM and dice (+CE).

Only the `weighted-*` losses use class weights: OHEM and dice already shift the gradient towards rare or hard
pixels, and on CamVid ENet weights cost the frequent classes more than they gave the rare ones (docs/TRAINING.md).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.data.datasets import IGNORE

LOSSES = ("ce", "weighted-ce", "ohem", "weighted-ohem", "dice")


def uses_class_weights(loss_name: str) -> bool:
    return loss_name.startswith("weighted-")


def enet_class_weights(class_pixel_counts: np.ndarray, c: float = 1.02) -> np.ndarray:
    """ENet's weighting w = 1 / ln(c + p): rare classes (pole, sign, bicyclist) weigh up to ~50x, bounded."""
    frequency = class_pixel_counts / max(class_pixel_counts.sum(), 1)
    return (1.0 / np.log(c + frequency)).astype(np.float32)


class OhemCrossEntropy(nn.Module):
    """Online hard example mining: average the loss over pixels that are still hard (p_true < threshold),
    keeping at least `min_kept` pixels so easy batches still give a gradient."""

    def __init__(self, threshold: float = 0.7, min_kept: int = 100_000, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.threshold = threshold
        self.min_kept = min_kept
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pixel_loss = F.cross_entropy(logits, target, weight=self.weight, ignore_index=IGNORE, reduction="none")
        pixel_loss = pixel_loss.flatten()
        valid = target.flatten() != IGNORE
        pixel_loss = pixel_loss[valid]
        if pixel_loss.numel() == 0:
            return logits.sum() * 0
        loss_threshold = -torch.log(torch.tensor(self.threshold, device=logits.device))
        hard = pixel_loss[pixel_loss > loss_threshold]
        if hard.numel() < min(self.min_kept, pixel_loss.numel()):
            hard, _ = pixel_loss.topk(min(self.min_kept, pixel_loss.numel()))
        return hard.mean()


class DiceCrossEntropy(nn.Module):
    """Soft dice over present classes plus cross-entropy (dice alone trains slowly from scratch)."""

    def __init__(self, num_classes: int, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target, weight=self.weight, ignore_index=IGNORE)
        valid = (target != IGNORE).unsqueeze(1)
        probabilities = logits.float().softmax(dim=1) * valid
        one_hot = F.one_hot(target.clamp(max=self.num_classes - 1), self.num_classes).permute(0, 3, 1, 2)
        one_hot = one_hot * valid
        intersection = (probabilities * one_hot).sum(dim=(0, 2, 3))
        cardinality = probabilities.sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3))
        present = one_hot.sum(dim=(0, 2, 3)) > 0
        dice = (2 * intersection + 1) / (cardinality + 1)
        dice_loss = (1 - dice[present]).mean() if present.any() else logits.sum() * 0
        return ce + dice_loss


def make_loss(name: str, num_classes: int, class_weights: np.ndarray | None = None) -> nn.Module:
    weight = torch.from_numpy(class_weights) if class_weights is not None else None
    if name == "ce":
        return nn.CrossEntropyLoss(ignore_index=IGNORE)
    if name == "weighted-ce":
        if weight is None:
            raise ValueError("weighted-ce needs class weights")
        return nn.CrossEntropyLoss(weight=weight, ignore_index=IGNORE)
    if name == "ohem":
        return OhemCrossEntropy()
    if name == "weighted-ohem":
        if weight is None:
            raise ValueError("weighted-ohem needs class weights")
        return OhemCrossEntropy(weight=weight)
    if name == "dice":
        return DiceCrossEntropy(num_classes)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
