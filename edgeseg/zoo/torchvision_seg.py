"""torchvision's segmentation models, plus a light FCN-8s on ResNet-18 that trains on a CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from edgeseg.zoo.registry import ModelEntry, register_model

if TYPE_CHECKING:
    from torch import nn


def _torchvision_builder(function_name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        from torchvision.models import segmentation

        from edgeseg.zoo.wrappers import UpsampleLogits

        factory = getattr(segmentation, function_name)
        # weights=None and weights_backbone=None: never download at build time; weights come from --weights.
        model = factory(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
        return UpsampleLogits(model, output_key="out")

    return build


def _fcn8s_resnet18(num_classes: int) -> nn.Module:
    from edgeseg.zoo.fcn8s import FCN8s

    return FCN8s(num_classes)


_TORCHVISION = {
    "deeplabv3-mobilenetv3": ("DeepLabV3", "deeplabv3_mobilenet_v3_large"),
    "deeplabv3-resnet50": ("DeepLabV3", "deeplabv3_resnet50"),
    "fcn-resnet50": ("FCN", "fcn_resnet50"),
    "lraspp-mobilenetv3": ("LR-ASPP", "lraspp_mobilenet_v3_large"),
}

# torchvision's heads end in classifier[4] (FCN, DeepLabV3); LR-ASPP adds a low- and a high-resolution classifier
_CLASSIFIERS = {
    "deeplabv3-mobilenetv3": ("model.classifier.4",),
    "deeplabv3-resnet50": ("model.classifier.4",),
    "fcn-resnet50": ("model.classifier.4",),
    "lraspp-mobilenetv3": ("model.classifier.high_classifier", "model.classifier.low_classifier"),
}

for _name, (_family, _function) in _TORCHVISION.items():
    register_model(ModelEntry(
        name=_name,
        family=_family,
        library="torchvision",
        builder=_torchvision_builder(_function),
        classifier=_CLASSIFIERS[_name],
        # torchvision's official weights predict the 21 PASCAL VOC classes (trained on a COCO subset).
        named_weights={"voc": f"torchvision:{_function}"},
    ))

register_model(ModelEntry(
    name="fcn-resnet18",
    family="FCN",
    library="torchvision",
    builder=_fcn8s_resnet18,
    classifier=("head32.4", "score16", "score8"),  # FCN-8s scores each stride and adds the scores
    notes="FCN-8s head (skips from strides 8/16/32) on torchvision's ResNet-18; light enough to train on a CPU",
))
