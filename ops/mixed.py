"""The DARTS mixed op: a softmax-weighted sum of candidate ops on one edge; and that sum over
many terms as one contraction."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from maskednas.ops.candidates import Zero, build_op


class MixedOp(nn.Module):
    def __init__(self, names: Sequence[str], c_in: int, c_out: int, stride: int, tied: bool) -> None:
        super().__init__()
        if not names:
            raise ValueError("a mixed op needs at least one candidate op")
        self.names = tuple(names)
        self.candidates = nn.ModuleDict(
            {name: build_op(name, c_in, c_out, stride, tied=tied) for name in self.names})
        # Parameter-free ops (pooling, identity) give the same output on every edge reading one input
        self.parameter_free = [not any(True for _ in op.parameters())
                               for op in self.candidates.values()]
        # In a hard-masked supernet only the chosen op runs (set by `restrict`)
        self.active: int | None = None

    def restrict(self, index: int | None) -> None:
        """Run only candidate `index` (`None`: all of them)."""
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


def weighted_sum(weights: torch.Tensor, terms: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_k weights[k] * terms[k] for equal-shaped NCHW terms, as one stack and one matrix-vector
    product: two kernels forward and three backward for any number of terms, where a chain of
    multiplies and adds launches two per term each way. A channels_last input stays channels_last."""
    channels_last = terms[0].dim() == 4 and not terms[0].is_contiguous() and \
        terms[0].is_contiguous(memory_format=torch.channels_last)
    if channels_last:  # NHWC views are contiguous: the stack and the product keep that layout
        terms = [t.permute(0, 2, 3, 1) for t in terms]
    stacked = torch.stack(terms)
    out = (weights.to(stacked.dtype) @ stacked.flatten(1)).view(stacked.shape[1:])
    return out.permute(0, 3, 1, 2) if channels_last else out
