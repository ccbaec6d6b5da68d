"""SegFormer b0-b5 from Hugging Face transformers (the library SegFormer users fine-tune with).

Configs are written out here rather than fetched, so a model builds offline; the official Cityscapes
weights stay reachable by name through the hub.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from edgeseg.data.palettes import CITYSCAPES
from edgeseg.zoo.registry import ModelEntry, register_model

if TYPE_CHECKING:
    from torch import nn
    from transformers import SegformerConfig

# variant -> (hidden_sizes, depths, decoder_hidden_size), from the SegFormer paper / official configs.
_VARIANTS = {
    "b0": ((32, 64, 160, 256), (2, 2, 2, 2), 256),
    "b1": ((64, 128, 320, 512), (2, 2, 2, 2), 256),
    "b2": ((64, 128, 320, 512), (3, 4, 6, 3), 768),
    "b3": ((64, 128, 320, 512), (3, 4, 18, 3), 768),
    "b4": ((64, 128, 320, 512), (3, 8, 27, 3), 768),
    "b5": ((64, 128, 320, 512), (3, 6, 40, 3), 768),
}


def segformer_config(variant: str, num_classes: int) -> SegformerConfig:
    from transformers import SegformerConfig

    hidden_sizes, depths, decoder_hidden = _VARIANTS[variant]
    return SegformerConfig(
        num_labels=num_classes,
        hidden_sizes=list(hidden_sizes),
        depths=list(depths),
        decoder_hidden_size=decoder_hidden,
        num_attention_heads=[1, 2, 5, 8],
        sr_ratios=[8, 4, 2, 1],
        semantic_loss_ignore_index=255,
    )


def variant_of(config: SegformerConfig) -> str:
    """Which of b0-b5 a SegformerConfig describes ('custom' if none)."""
    for variant, (hidden_sizes, depths, decoder_hidden) in _VARIANTS.items():
        if (tuple(config.hidden_sizes), tuple(config.depths), config.decoder_hidden_size) == (
                hidden_sizes, depths, decoder_hidden):
            return variant
    return "custom"


def _builder(variant: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        from transformers import SegformerForSemanticSegmentation

        from edgeseg.zoo.wrappers import UpsampleLogits

        model = SegformerForSemanticSegmentation(segformer_config(variant, num_classes))
        return UpsampleLogits(model, output_key="pixel_values")

    return build


def _hub_id(variant: str) -> str:
    # b0 and b1 ship 1024x1024 Cityscapes fine-tunes; so do b2-b5.
    return f"hf:nvidia/segformer-{variant}-finetuned-cityscapes-1024-1024"


for _variant in _VARIANTS:
    register_model(ModelEntry(
        name=f"segformer-{_variant}",
        family="SegFormer",
        library="transformers",
        builder=_builder(_variant),
        classifier=("model.decode_head.classifier",),
        named_weights={"cityscapes": _hub_id(_variant)},
    ))

CITYSCAPES_LABELS = CITYSCAPES  # the label set the named hub weights predict
