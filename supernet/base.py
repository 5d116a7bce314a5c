"""What every search space gives the search loop, the cost model and the discretizer.

A space owns its op logits (`alphas`), its channel masks (`masks`) and one temperature shared by
the alpha softmax and the mask sigmoids. Op weights are kept in the space's own layout (a vector
per macro layer, an edges x ops matrix per DARTS cell type); the space knows how to

  select(weights)         -> the one-hot weights of the architecture a derivation would give,
  cost(weights, widths)   -> MACs and params, exact at one-hot weights and integer widths,
  op_scores(widths, ...)  -> every candidate's MACs, to find the widest and the cheapest network,
  derive_ops(weights)     -> that architecture's ops as plain data (used by `export/`).
"""
from __future__ import annotations

import torch
from torch import nn


class Supernet(nn.Module):
    space_name = "?"

    def __init__(self, space, in_channels: int, num_classes: int, input_size: int) -> None:
        super().__init__()
        space.validate()
        self.space, self.in_channels, self.num_classes = space, in_channels, num_classes
        self.input_size = input_size
        self.register_buffer("temperature", torch.tensor(1.0))
        self.masks = nn.ModuleDict()
        self.alphas = nn.ParameterDict()

    # -- parameters ---------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """Op logits (alpha) and mask logits: updated on validation batches only."""
        return [*self.alphas.values(), *(m.logits for m in self.masks.values())]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    # -- schedules ------------------------------------------------------------------------------
    def set_temperature(self, value: float) -> None:
        self.temperature.fill_(value)

    def set_progress(self, fraction: float) -> None:
        """Fraction of the architecture search done, in [0, 1]; spaces with a schedule of their
        own (the DARTS space's decaying auxiliary skip) follow it."""

    # -- architecture state ---------------------------------------------------------------------
    def gates(self) -> dict[str, torch.Tensor]:
        return {name: mask(self.temperature) for name, mask in self.masks.items()}

    def keep_channels(self, group: str, logits: torch.Tensor, count: int) -> torch.Tensor:
        """Indices (ascending) of the `count` channels of `group` to keep: the highest logits."""
        return torch.sort(torch.topk(logits, count).indices).values

    def channel_step(self, group: str) -> int:
        """Kept counts of `group` are multiples of this (2 where an op splits it in halves)."""
        return 1

    def arch_stats(self) -> dict[str, float]:
        """Numbers about the current architecture worth logging every epoch."""
        return {}
