"""Small nn.Module adapters so every zoo model maps NxCxHxW float input to NxKxHxW logits at input size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class UpsampleLogits(nn.Module):
    """Wrap a model whose logits come out at a lower resolution (SegFormer: 1/4) or in a dict/ModelOutput."""

    def __init__(self, model: nn.Module, output_key: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.output_key = output_key

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.output_key == "pixel_values":  # transformers models take a keyword argument
            logits = self.model(pixel_values=pixel_values).logits
        else:
            out = self.model(pixel_values)
            logits = out[self.output_key] if self.output_key else out
        if logits.shape[-2:] != pixel_values.shape[-2:]:
            logits = F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
        return logits


class PadToMultiple(nn.Module):
    """Encoder-decoders with skip connections need sides divisible by their output stride (32 for U-Net, 16 for
    DeepLabV3+, whose encoder is dilated after stride 16).

    Rather than silently resizing the user's 360x480 input, pad bottom/right with zeros (the normalised mean
    colour) and crop the logits back, so the output matches the input pixel for pixel.
    """

    def __init__(self, model: nn.Module, multiple: int = 32) -> None:
        super().__init__()
        self.model = model
        self.multiple = multiple

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        height, width = pixel_values.shape[-2:]
        pad_h = (-height) % self.multiple
        pad_w = (-width) % self.multiple
        if pad_h or pad_w:
            pixel_values = F.pad(pixel_values, (0, pad_w, 0, pad_h))
        logits = self.model(pixel_values)
        return logits[..., :height, :width]
