"""DARTS' auxiliary classifier for training a cell network: a second head on the output of the
cell at 2/3 depth, whose loss (weighted, DARTS uses 0.4) joins the main loss during training and
which is thrown away afterwards, so the exported model is unchanged."""
from __future__ import annotations

import torch
from torch import nn

from maskednas.ops.candidates import conv, norm


class AuxiliaryHead(nn.Module):
    """DARTS' AuxiliaryHeadCIFAR (ReLU, pool to 2x2, 1x1 conv to 128, BN, ReLU, 2x2 conv to
    768, BN, ReLU, linear), pooling adaptively so that any feature size of at least 2 works."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(), nn.AdaptiveAvgPool2d(2), conv(channels, 128, 1), norm(128, "out"), nn.ReLU(),
            nn.Conv2d(128, 768, 2, bias=False), norm(768, "out"), nn.ReLU())
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


class AuxiliaryTap:
    """Keeps the output of `model.cells[2 * len(cells) // 3]` (DARTS' position: the second
    reduction cell) from each forward pass, and the head that classifies it."""

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        cells = getattr(model, "cells", None)
        if not cells:
            raise ValueError("finetune.aux_weight > 0 needs a cell network (space=darts); this "
                             "model has no cells")
        index = 2 * len(cells) // 3
        device = next(model.parameters()).device
        self.head = AuxiliaryHead(model.arch.cells[index].out_channels, num_classes).to(device)
        self.features: torch.Tensor | None = None
        self._handle = cells[index].register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.features = output if module.training else None

    def logits(self) -> torch.Tensor:
        return self.head(self.features)

    def remove(self) -> None:
        self._handle.remove()
        self.features = None
