"""2:4 semi-structured sparsity: in every group of 4 consecutive input-channel weights keep the 2 largest.

Ampere and newer GPUs run such weights on sparse tensor cores (TensorRT's sparse-weights builder option, recorded
as `sparsity: "2:4"` in the checkpoint sidecar and spec). The pattern is taken along the input-channel axis at each
kernel position, as TensorRT reads it: a conv weight (out, in/groups, kh, kw) is grouped as (out, kh, kw, in/groups).

Keeping the pattern while fine-tuning: the masks are plain boolean tensors re-applied in place after every
optimizer step (`reapply_2to4`), NVIDIA ASP's approach. Parametrizations (torch.nn.utils.parametrize) would keep
it without a hook, but they rename every weight in the state_dict (`weight` -> `parametrizations.weight.original`),
which would break checkpoint and spec compatibility; a post-step re-mask keeps state_dicts plain. train.py re-masks
automatically when the weights it starts from carry a 2:4 spec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    import torch
    from torch import nn

SPARSITY_PATTERNS = ("2:4",)
GROUP = 4  # weights per group
KEEP = 2  # non-zeros allowed per group


def _grouped_view(weight: torch.Tensor) -> torch.Tensor:
    """(out, in, *k) -> (..., 4): groups of 4 consecutive input channels at each kernel position."""
    moved = weight.movedim(1, -1) if weight.ndim > 2 else weight
    return moved.reshape(-1, GROUP)


def eligible_layers(model: nn.Module, skip: Iterable[str] = ()) -> dict[str, nn.Module]:
    """Conv/Linear layers whose input channels per group split into groups of 4 (depthwise convs never do)."""
    from torch import nn

    skipped = set(skip)
    layers = {}
    for name, module in model.named_modules():
        if name in skipped or not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        if isinstance(module, nn.modules.conv._ConvNd) and module.transposed:
            continue  # TensorRT's sparse kernels cover convolutions and matrix multiplies only
        if module.weight.shape[1] % GROUP == 0:
            layers[name] = module
    return layers


def mask_2to4(weight: torch.Tensor) -> torch.Tensor:
    """Boolean mask (weight's shape) keeping the 2 largest magnitudes of every group of 4 input channels."""
    import torch

    groups = _grouped_view(weight.detach().abs())
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(KEEP, dim=1).indices, True)
    if weight.ndim > 2:
        moved_shape = weight.movedim(1, -1).shape
        return keep.reshape(moved_shape).movedim(-1, 1).contiguous()
    return keep.reshape(weight.shape)


def apply_2to4(model: nn.Module, skip: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Zero all but the 2 largest of every 4 weights in eligible layers; returns {layer name: mask}."""
    import torch

    masks = {}
    with torch.no_grad():
        for name, module in eligible_layers(model, skip).items():
            mask = mask_2to4(module.weight)
            module.weight.mul_(mask)
            masks[name] = mask
    return masks


def reapply_2to4(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the masked weights again (call after each optimizer step: the update makes them non-zero)."""
    import torch

    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            weight = modules[name].weight
            weight.mul_(mask.to(weight.device))


def current_2to4_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Masks for the layers that already follow 2:4 (a sparse checkpoint's): re-derived, so nothing but the
    weights needs storing; layers left dense on purpose (the classifier) stay dense."""
    masks = {}
    for name, module in eligible_layers(model).items():
        nonzeros = (_grouped_view(module.weight.detach()) != 0).sum(dim=1)
        if bool((nonzeros <= KEEP).all()):
            masks[name] = mask_2to4(module.weight)
    return masks


def check_2to4(model: nn.Module, skip: Iterable[str] = ()) -> float:
    """Fraction of eligible weight groups with at most 2 non-zeros of 4 (1.0: the whole model is 2:4)."""
    satisfied = total = 0
    for module in eligible_layers(model, skip).values():
        nonzeros = (_grouped_view(module.weight.detach()) != 0).sum(dim=1)
        satisfied += int((nonzeros <= KEEP).sum())
        total += nonzeros.numel()
    return satisfied / total if total else 1.0
