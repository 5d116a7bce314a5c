"""LayerNorm over the channel dimension (channels last, or timm's LayerNorm2d over dim 1):
normalised with gate-weighted statistics, which over 0/1 gates are exactly those of the kept
channels. fvcore counts 5 per element with affine parameters, 4 without."""
from __future__ import annotations

import math

import torch
from torch import nn

from maskednas.ops.cost import Cost
from maskednas.ops.layer_rules.base import LayerRule, affine_vectors, register_layer_rule


def _cost(m: nn.LayerNorm, c_in, c, shape_in, shape_out) -> Cost:
    affine = m.weight is not None
    rows = math.prod(shape_in[1:]) // m.normalized_shape[0]  # positions normalised per sample
    return Cost((5 if affine else 4) * c * rows, c * affine_vectors(m))


def _normalize(m: nn.LayerNorm, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    channels_first = x.shape[-1] != m.normalized_shape[0] or "2d" in type(m).__name__.lower()
    x = x.movedim(1, -1) if channels_first else x
    w = gate.to(x.dtype)
    w = w / w.sum()
    mean = (x * w).sum(-1, keepdim=True)
    y = (x - mean) * torch.rsqrt(((x - mean) ** 2 * w).sum(-1, keepdim=True) + m.eps)
    if m.weight is not None:
        y = y * m.weight
    if m.bias is not None:
        y = y + m.bias
    return y.movedim(-1, 1) if channels_first else y


register_layer_rule("layernorm", LayerRule(nn.LayerNorm, lambda m, side: m.normalized_shape[0], _cost,
                                           same_channels=True, normalize=_normalize,
                                           width_attributes=("normalized_shape",)))
