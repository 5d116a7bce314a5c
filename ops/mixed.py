"""The DARTS mixed op: a softmax-weighted sum of candidate ops on one edge."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ops.candidates import Zero, build_op


class MixedOp(nn.Module):
    def __init__(self, names: Sequence[str], c_in: int, c_out: int, stride: int, tied: bool) -> None:
        super().__init__()
        if not names:
            raise ValueError("a mixed op needs at least one candidate op")
        self.names = tuple(names)
        self.candidates = nn.ModuleDict(
            {name: build_op(name, c_in, c_out, stride, tied=tied) for name in self.names})
        # After discretization only the chosen op runs (set by `fix`); weights stay one-hot.
        self.active: int | None = None

    def fix(self, index: int | None) -> None:
        self.active = index

    def forward(self, x: torch.Tensor, weights: torch.Tensor,
                hidden_gates: Sequence[torch.Tensor | None]) -> torch.Tensor:
        out = None
        for i, op in enumerate(self.candidates.values()):
            if isinstance(op, Zero) or (self.active is not None and i != self.active):
                continue  # zero contributes nothing: skip the work, its weight stays in the softmax
            y = weights[i] * op(x, hidden_gates[i])
            out = y if out is None else out + y
        if out is None:  # only `zero` is active: it alone knows the output shape
            zero = next(op for op in self.candidates.values() if isinstance(op, Zero))
            out = zero(x)
        return out
