"""Stem and classifier head, shared by the supernet and the compact models built from it."""
from __future__ import annotations

import torch
from torch import nn

from maskednas.ops import cost as C
from maskednas.ops.candidates import conv, norm, tag


class Stem(nn.Sequential):
    """3x3 conv + BN; no activation, since every op starts with its own (ReLU-Conv-BN order)."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__(conv(in_channels, channels, 3, roles=("image", "out")), norm(channels, "out"))

    @staticmethod
    def cost(in_channels, channels, h: int, w: int) -> C.Cost:
        return C.conv(in_channels, channels, 3, h, w) + C.batchnorm(channels, h, w)


class Head(nn.Module):
    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = tag(nn.Linear(channels, num_classes), "in", "classes")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(x)).flatten(1))

    @staticmethod
    def cost(channels, num_classes: int, h: int, w: int) -> C.Cost:
        return C.global_avg_pool(channels, h, w) + C.linear(channels, num_classes)
