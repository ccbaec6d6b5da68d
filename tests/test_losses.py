"""Losses for unbalanced classes, checked against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from edgeseg.data.datasets import IGNORE
from edgeseg.losses import DiceCrossEntropy, OhemCrossEntropy, enet_class_weights, make_loss, uses_class_weights


def _logits_for(probabilities_of_true: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-class logits, one pixel per entry, whose softmax gives class 0 the stated probability."""
    p = torch.tensor(probabilities_of_true, dtype=torch.float64)
    logits = torch.stack([torch.log(p), torch.log(1 - p)]).view(1, 2, 1, len(probabilities_of_true))
    target = torch.zeros(1, 1, len(probabilities_of_true), dtype=torch.long)
    return logits, target


def test_enet_weights_match_the_formula():
    weights = enet_class_weights(np.array([98, 2]))
    assert weights[0] == pytest.approx(1 / math.log(1.02 + 0.98), rel=1e-6)
    assert weights[1] == pytest.approx(1 / math.log(1.02 + 0.02), rel=1e-6)
    assert weights[1] > 17 * weights[0]  # the rare class weighs much more, but bounded by 1/ln(1.02)


def test_ohem_averages_only_the_hard_pixels():
    # p_true 0.9 and 0.8 are easy (above the 0.7 threshold); 0.5 and 0.1 are hard.
    logits, target = _logits_for([0.9, 0.8, 0.5, 0.1])
    loss = OhemCrossEntropy(threshold=0.7, min_kept=1)(logits, target)
    assert loss.item() == pytest.approx((-math.log(0.5) - math.log(0.1)) / 2, rel=1e-9)


def test_ohem_keeps_at_least_min_kept_pixels():
    logits, target = _logits_for([0.99, 0.9, 0.8, 0.5])
    loss = OhemCrossEntropy(threshold=0.7, min_kept=3)(logits, target)
    # only one pixel is hard, so the three largest losses are kept
    assert loss.item() == pytest.approx((-math.log(0.5) - math.log(0.8) - math.log(0.9)) / 3, rel=1e-9)


def test_ohem_ignores_void_pixels():
    logits, target = _logits_for([0.1, 0.5, 0.9])
    target[0, 0, 0] = IGNORE  # the hardest pixel is void: it must not count
    loss = OhemCrossEntropy(threshold=0.7, min_kept=1)(logits, target)
    assert loss.item() == pytest.approx(-math.log(0.5), rel=1e-9)


def test_dice_plus_ce_is_ce_when_prediction_is_perfect_for_dice():
    # one-hot-like logits: dice ~ 0, so the loss is the (tiny) cross-entropy
    logits = torch.tensor([[[[20.0, -20.0]], [[-20.0, 20.0]]]])
    target = torch.tensor([[[0, 1]]])
    assert DiceCrossEntropy(num_classes=2)(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_only_weighted_losses_take_class_weights():
    weights = np.array([1.0, 5.0], dtype=np.float32)
    assert [name for name in ("ce", "weighted-ce", "ohem", "weighted-ohem", "dice") if uses_class_weights(name)] \
        == ["weighted-ce", "weighted-ohem"]
    assert make_loss("ohem", 2).weight is None
    assert make_loss("weighted-ohem", 2, weights).weight.tolist() == [1.0, 5.0]
    with pytest.raises(ValueError, match="weighted-ohem needs class weights"):
        make_loss("weighted-ohem", 2)
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        make_loss("focal", 2)


def test_weighted_ce_is_the_weight_normalised_mean():
    # pixel 0: class 0 predicted with p=0.9; pixel 1: class 1 predicted with p=0.5
    logits, target = _logits_for([0.9, 0.5])
    logits, target = logits.float(), target.clone()
    target[0, 0, 1] = 1
    l0, l1 = -math.log(0.9), -math.log(0.5)
    assert make_loss("ce", 2)(logits, target).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    weighted = make_loss("weighted-ce", 2, np.array([1.0, 3.0], dtype=np.float32))(logits, target).item()
    assert weighted == pytest.approx((1 * l0 + 3 * l1) / 4, rel=1e-5)
