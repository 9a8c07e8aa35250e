"""Feature extractors: a torchvision ResNet-18 for real runs, a small CNN for CPU demos."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18

from clup.config import BackboneConfig
from clup.models.catalogue import BACKBONES, RESNET18, SMALL_CNN, STEMS


class Backbone(nn.Module):
    """Maps images to a pooled embedding of `out_dim` features."""

    def __init__(self, body: nn.Module, out_dim: int) -> None:
        super().__init__()
        self.body = body
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def build_backbone(config: BackboneConfig) -> Backbone:
    if config.name == RESNET18:
        return _resnet18(config.small_images, config.stem)
    if config.name == SMALL_CNN:
        return _small_cnn(config.width)
    raise ValueError(f"backbone.name must be one of {BACKBONES}, got {config.name!r}")


def _resnet18(small_images: bool, stem: str = "small") -> Backbone:
    net = resnet18(weights=None)
    if small_images:
        # SwAV on small faces: a stride-1 stem without max-pool keeps spatial detail.
        kernel, padding = STEMS[stem]
        net.conv1 = nn.Conv2d(3, 64, kernel_size=kernel, stride=1, padding=padding, bias=False)
        net.maxpool = nn.Identity()
    out_dim = net.fc.in_features
    net.fc = nn.Identity()
    return Backbone(net, out_dim)


def _small_cnn(width: int) -> Backbone:
    """Four stages of two 3x3 convolutions and a 2x2 max-pool, widths w, 2w, 4w, 8w."""
    layers: list[nn.Module] = []
    channels = 3
    for stage in range(4):
        out = width * 2**stage
        for conv_in in (channels, out):
            layers += [
                nn.Conv2d(conv_in, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
        # ceil_mode keeps tiny inputs (SwAV's small local crops) from pooling to nothing.
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Backbone(nn.Sequential(*layers), channels)
