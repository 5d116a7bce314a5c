"""Learnable channel masks.

A mask holds one logit per channel of a channel group. Every layer whose channels are tied
(a residual stream, the inside of one inverted-residual block) multiplies by the same gate, so
pruning a channel removes it from all of them at once.

During search the gate is sigmoid(logit / temperature); the temperature is annealed toward zero
so that gates end near 0 or 1 and discretizing changes the network little. `harden` replaces the
soft gate with an exact 0/1 keep vector: the "hard-masked supernet" that a slimmed model must match.

The one rule for which channels a network keeps: logit >= 0 (gate >= 1/2 at every temperature),
read from the logits so that the rounding of a float32 sigmoid never decides it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


KEEP_LOGIT = 0.0  # a channel whose mask logit is at least this is kept


class ChannelMask(nn.Module):
    def __init__(self, channels: int, init_logit: float = 3.0) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"a channel mask needs at least one channel, got {channels}")
        self.logits = nn.Parameter(torch.full((channels,), float(init_logit)))
        self.register_buffer("keep", torch.ones(channels, dtype=torch.bool))
        self.hard = False

    @property
    def channels(self) -> int:
        return self.logits.numel()

    def forward(self, temperature: torch.Tensor | float = 1.0) -> torch.Tensor:
        """The gate vector, shape (channels,)."""
        if self.hard:
            return self.keep.to(self.logits.dtype)
        return torch.sigmoid(self.logits / temperature)

    def kept(self) -> torch.Tensor:
        """Boolean vector of the channels a derivation keeps now (the hard keep set once hardened)."""
        return self.keep.clone() if self.hard else self.logits.detach() >= KEEP_LOGIT

    def harden(self, keep_indices: torch.Tensor | list[int]) -> None:
        keep = torch.zeros_like(self.keep)
        keep[torch.as_tensor(keep_indices, dtype=torch.long, device=keep.device)] = True
        self.harden_to(keep)

    def harden_to(self, keep: torch.Tensor) -> None:
        """Harden to a boolean keep vector on the mask's device (no host copy: the sandwich
        rule hardens every group several times a step)."""
        self.keep.copy_(keep)
        self.hard = True

    def soften(self) -> None:
        self.keep.fill_(True)
        self.hard = False


def apply_gate(x: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """Scale the channels (dim 1) of an NCHW tensor by a gate vector; `None` means no mask."""
    return x if gate is None else x * gate.view(1, -1, 1, 1).to(x.dtype)


@dataclass(frozen=True)
class WidthRounding:
    """How a derivation turns a count of kept channels into a width: at least `min_channels`,
    a multiple of `round_to` (and of the group's own step) by timm's `make_divisible` rule, at
    most the group's size. The discretizer and the penalty's discrete cost both apply it, so the
    cost the search is pulled by is the cost of the network it will derive. A group whose
    members are `unit` channels each (an attention head of `unit` channels) counts members: its
    widths are the member counts whose channels are multiples of `round_to`, at least one member."""

    round_to: int = 1
    min_channels: int = 1

    def divisor(self, step: int = 1, unit: int = 1) -> int:
        """What a group with channel step `step` (in members of `unit` channels) rounds its
        widths to a multiple of."""
        return math.lcm(self.round_to, step * unit) // unit

    def minimum(self, unit: int = 1) -> int:
        return -(-self.min_channels // unit)

    def __call__(self, count, size: int, step: int = 1, unit: int = 1):
        """The width for `count` kept channels (an int, or a tensor on any device: no sync)."""
        divisor = self.divisor(step, unit)
        exact = isinstance(count, int)
        count = torch.as_tensor(count)
        count = (self.rounded(count, size, divisor, self.minimum(unit)) if divisor > 1
                 else count.clamp(self.minimum(unit), size))
        return int(count) if exact else count

    def rounded(self, count: torch.Tensor, size, divisor, minimum=None) -> torch.Tensor:
        """Elementwise widths for integer `count`s (`size`, `divisor` and `minimum` numbers or
        tensors like it): timm.layers.make_divisible(count, divisor), in tensor ops, then the
        bounds."""
        count = torch.maximum(count, torch.as_tensor(self.min_channels if minimum is None else minimum,
                                                     dtype=count.dtype, device=count.device))
        rounded = torch.clamp((count + divisor / 2) // divisor * divisor, min=divisor)
        return torch.clamp(torch.where(rounded < 0.9 * count, rounded + divisor, rounded), max=size)
