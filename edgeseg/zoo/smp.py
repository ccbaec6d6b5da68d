"""U-Net and DeepLabV3+ from segmentation-models-pytorch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from edgeseg.zoo.registry import ModelEntry, register_model

if TYPE_CHECKING:
    from torch import nn


def _smp_builder(architecture: str, encoder: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import segmentation_models_pytorch as smp

        from edgeseg.zoo.wrappers import PadToMultiple

        factory = getattr(smp, architecture)
        # encoder_weights=None: never download at build time.
        model = factory(encoder_name=encoder, encoder_weights=None, classes=num_classes)
        # Pad to what the model needs, no more: DeepLabV3+'s dilated encoder stops at stride 16, so 360 rows are
        # padded to 368, not 384 (4% less work on every backend); U-Net's encoders go to stride 32.
        return PadToMultiple(model, multiple=model.encoder.output_stride)

    return build


_SMP = {
    "unet-resnet18": ("U-Net", "Unet", "resnet18"),
    "unet-resnet34": ("U-Net", "Unet", "resnet34"),
    "unet-mobilenetv2": ("U-Net", "Unet", "mobilenet_v2"),
    "deeplabv3plus-resnet50": ("DeepLabV3+", "DeepLabV3Plus", "resnet50"),
    "deeplabv3plus-mobilenetv2": ("DeepLabV3+", "DeepLabV3Plus", "mobilenet_v2"),
}

for _name, (_family, _architecture, _encoder) in _SMP.items():
    register_model(ModelEntry(
        name=_name,
        family=_family,
        library="segmentation-models-pytorch",
        builder=_smp_builder(_architecture, _encoder),
        classifier=("model.segmentation_head.0",),
    ))
