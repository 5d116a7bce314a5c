"""timm's GlobalResponseNorm (ConvNeXt-V2): each channel's spatial L2 norm divided by the mean of
those norms over the channels. The mean is gate-weighted, which over 0/1 gates is exactly the
mean over the kept channels. fvcore counts none of its ops: its cost is its two vectors."""
from __future__ import annotations

import torch
from timm.layers.grn import GlobalResponseNorm

from maskednas.ops.cost import Cost
from maskednas.ops.layer_rules.base import LayerRule, register_layer_rule


def _normalize(m: GlobalResponseNorm, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    shape = [1] * x.ndim
    shape[m.channel_dim] = -1
    w = gate.to(x.dtype).view(shape)
    x_g = x.norm(p=2, dim=m.spatial_dim, keepdim=True)
    mean = (x_g * w).sum(m.channel_dim, keepdim=True) / w.sum()
    return x + torch.addcmul(m.bias.view(m.wb_shape), m.weight.view(m.wb_shape), x * (x_g / (mean + m.eps)))


register_layer_rule("global_response_norm", LayerRule(
    GlobalResponseNorm, lambda m, side: m.weight.numel(),
    lambda m, c_in, c, shape_in, shape_out: Cost(0, 2 * c),
    same_channels=True, normalize=_normalize))
