"""GroupNorm: normalised per group with gate-weighted statistics. A pruned network keeps
GroupNorm's groups, so every group must keep as many channels as the others (its partitions):
the discretizer keeps the best count/G channels of each. fvcore counts 5 per element with
affine parameters, 4 without."""
from __future__ import annotations

import math

import torch
from torch import nn

from maskednas.ops.cost import Cost
from maskednas.ops.layer_rules.base import LayerRule, affine_vectors, register_layer_rule


def _cost(m: nn.GroupNorm, c_in, c, shape_in, shape_out) -> Cost:
    affine = m.weight is not None
    return Cost((5 if affine else 4) * c * math.prod(shape_in[2:]), c * affine_vectors(m))



def _normalize(m: nn.GroupNorm, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    n, c = x.shape[:2]
    g = m.num_groups
    xs = x.reshape(n, g, c // g, -1)
    w = gate.to(x.dtype).reshape(1, g, c // g, 1)
    count = (w.sum(2, keepdim=True) * xs.shape[-1]).clamp_min(torch.finfo(x.dtype).tiny)
    mean = (xs * w).sum((2, 3), keepdim=True) / count
    var = ((xs - mean) ** 2 * w).sum((2, 3), keepdim=True) / count
    y = ((xs - mean) * torch.rsqrt(var + m.eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.dim() - 2)
    if m.weight is not None:
        y = y * m.weight.view(shape)
    if m.bias is not None:
        y = y + m.bias.view(shape)
    return y


register_layer_rule("groupnorm", LayerRule(nn.GroupNorm, lambda m, side: m.num_channels, _cost,
                                           same_channels=True, normalize=_normalize,
                                           partitions=lambda m: m.num_groups,
                                           width_attributes=("num_channels",)))
