"""timm's RmsNorm and SimpleNorm (over the last dimension; the `2d` ones over the channels of
NCHW; float32 variants included, computed here in the input's dtype): x scaled by the
reciprocal root of its mean square (RmsNorm) or of its unbiased variance (SimpleNorm, which does
not centre x), both gate-weighted, which over 0/1 gates is exactly the statistic of the kept
channels. fvcore counts none of their ops:
the cost is the weight."""
from __future__ import annotations

import torch
from timm.layers import norm

from maskednas.ops.cost import Cost
from maskednas.ops.layer_rules.base import LayerRule, register_layer_rule

_types = lambda *names: tuple(getattr(norm, n) for n in names if hasattr(norm, n))  # by timm version
_CHANNELS_FIRST = _types("RmsNorm2d", "RmsNorm2dFp32", "SimpleNorm2d", "SimpleNorm2dFp32")
_VARIANCE = _types("SimpleNorm", "SimpleNormFp32", "SimpleNorm2d", "SimpleNorm2dFp32")


def _normalize(m: torch.nn.Module, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    dim = 1 if isinstance(m, _CHANNELS_FIRST) else x.ndim - 1
    shape = [1] * x.ndim
    shape[dim] = -1
    w = gate.to(x.dtype).view(shape)
    kept = w.sum()
    if isinstance(m, _VARIANCE):  # unbiased: sum(w) - 1 over 0/1 gates, never below 0 over soft ones
        mean = (x * w).sum(dim, keepdim=True) / kept
        statistic = ((x - mean).pow(2) * w).sum(dim, keepdim=True) / (kept - w.pow(2).sum() / kept)
    else:
        statistic = (x.pow(2) * w).sum(dim, keepdim=True) / kept
    y = x * torch.rsqrt(statistic + m.eps)
    return y if m.weight is None else y * m.weight.view(shape)


def _resized(m: torch.nn.Module) -> None:
    if m.weight is not None:
        m.normalized_shape = (m.weight.numel(),)


for _type in (*_types("RmsNorm", "RmsNormFp32", "SimpleNorm", "SimpleNormFp32"), *_CHANNELS_FIRST):
    register_layer_rule(_type.__name__.lower(), LayerRule(
        _type, lambda m, side: m.normalized_shape[0],
        lambda m, c_in, c, shape_in, shape_out: Cost(0, c if m.weight is not None else 0),
        same_channels=True, normalize=_normalize, width_attributes=("normalized_shape",),
        resized=_resized))
