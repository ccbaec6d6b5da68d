"""FCN-8s (Long et al., 2015) on a torchvision ResNet-18 encoder.

torchvision's FCN uses a dilated ResNet-50 (stride 8 throughout), which is too heavy to train on a CPU, and
ResNet-18's basic blocks cannot be dilated. FCN-8s recovers detail instead by adding 1x1 class scores from
strides 8 and 16 to the upsampled stride-32 scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FCN8s(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        from torchvision.models import resnet18

        encoder = resnet18(weights=None)
        self.stem = nn.Sequential(encoder.conv1, encoder.bn1, encoder.relu, encoder.maxpool, encoder.layer1)
        self.layer2, self.layer3, self.layer4 = encoder.layer2, encoder.layer3, encoder.layer4
        self.head32 = nn.Sequential(
            nn.Conv2d(512, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Dropout2d(0.1), nn.Conv2d(256, num_classes, 1),
        )
        self.score16 = nn.Conv2d(256, num_classes, 1)
        self.score8 = nn.Conv2d(128, num_classes, 1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        stride8 = self.layer2(self.stem(pixel_values))
        stride16 = self.layer3(stride8)
        stride32 = self.layer4(stride16)
        scores = self.head32(stride32)
        scores = F.interpolate(scores, size=stride16.shape[-2:], mode="bilinear", align_corners=False)
        scores = scores + self.score16(stride16)
        scores = F.interpolate(scores, size=stride8.shape[-2:], mode="bilinear", align_corners=False)
        scores = scores + self.score8(stride8)
        return F.interpolate(scores, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
