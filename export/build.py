"""Build a compact model from an `Architecture`, with nothing but `ops/` and `export/`."""
from __future__ import annotations

import torch
from torch import nn

from export.architecture import Architecture, LayerChoice
from ops import Head, Stem, build_op


class CompactLayer(nn.Module):
    def __init__(self, choice: LayerChoice) -> None:
        super().__init__()
        self.residual = choice.residual
        self.op = build_op(choice.op, choice.c_in, choice.c_out, choice.stride,
                           hidden=choice.hidden, tied=choice.residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.op(x) if self.residual else self.op(x)


class CompactNet(nn.Module):
    """The searched network as plain layers; removed layers become `nn.Identity`."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        self.stem = Stem(arch.in_channels, arch.stem_channels)
        self.layers = nn.Sequential(
            *[nn.Identity() if c.removed else CompactLayer(c) for c in arch.layers])
        self.head = Head(arch.out_channels, arch.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


def build(arch: Architecture) -> CompactNet:
    return CompactNet(arch)
