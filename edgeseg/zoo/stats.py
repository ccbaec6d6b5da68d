"""Parameter and compute counts for the zoo, measured on the meta device (no memory, no weights)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeseg.zoo.registry import ModelEntry, list_models
from edgeseg.zoo.weights import default_weights_label

if TYPE_CHECKING:
    from torch import nn


def count_params_and_gflops(model: nn.Module, input_size: tuple[int, int]) -> tuple[int, float]:
    """(parameters, GMACs for one image) of a torch model; GMACs are what papers call GFLOPs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, *input_size, device=device))
    model.train(was_training)
    return params, counter.get_total_flops() / 2e9


def entry_stats(entry: ModelEntry) -> dict:
    import torch

    with torch.device("meta"):
        model = entry.builder(entry.label_set.num_classes)
    params, gflops = count_params_and_gflops(model, entry.input_size)
    return {"name": entry.name, "family": entry.family, "library": entry.library, "params_m": params / 1e6,
            "gflops": gflops, "input_size": list(entry.input_size), "default_weights": default_weights_label(entry),
            "named_weights": sorted(entry.named_weights)}


def zoo_table() -> list[dict]:
    return [entry_stats(entry) for entry in list_models()]
