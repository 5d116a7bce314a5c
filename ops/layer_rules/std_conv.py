"""timm's weight-standardised convolutions (NF-Nets, BiT, hybrid ViTs' stems: StdConv2d,
ScaledStdConv2d and their `Same` padding variants): a conv whose weight is normalised per output
channel by `F.batch_norm` on every forward. fvcore counts that normalisation, 5 per weight with
ScaledStdConv's gain as its affine weight and 4 without, and the gain's parameters (one per
output channel). Pruned like the convolution it is (dense, depthwise or grouped); its gain is
sliced with the output channels, which Torch-Pruning's conv pruner misses. A dense one
standardises each filter over its input channels, so in the masked network the statistics are
gate-weighted (over 0/1 gates exactly those of the kept inputs, as in the slimmed network);
a depthwise or grouped one loses whole filters with their inputs, its statistics unchanged."""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from maskednas.ops.cost import Cost
from maskednas.ops.layer_rules.base import LAYER_RULES, register_layer_rule
from maskednas.ops.layer_rules.conv import is_depthwise
from maskednas.ops.layer_rules.grouped_conv import is_grouped


def _std_conv_types() -> tuple[type, ...]:
    from timm.layers import ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
    return StdConv2d, StdConv2dSame, ScaledStdConv2d, ScaledStdConv2dSame


def _with_standardisation(cost):
    def standardised(m: nn.Conv2d, c_in, c_out, shape_in, shape_out) -> Cost:
        conv = cost(m, c_in, c_out, shape_in, shape_out)
        weights = conv.params - (c_out if m.bias is not None else 0)
        gain = getattr(m, "gain", None) is not None
        return Cost(conv.macs + (5 if gain else 4) * weights, conv.params + (c_out if gain else 0))
    return standardised


def _gated_forward(m: nn.Conv2d, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """The conv on the gated input, each filter standardised over its kept inputs only."""
    gate = gate.to(x.dtype).view(1, -1, 1, 1)
    w, g = m.weight, gate.expand_as(m.weight)
    count = g.sum((1, 2, 3), keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    mean = (w * g).sum((1, 2, 3), keepdim=True) / count
    var = ((w - mean) ** 2 * g).sum((1, 2, 3), keepdim=True) / count
    w = (w - mean) * torch.rsqrt(var + m.eps)
    if getattr(m, "gain", None) is not None:
        w = w * (m.gain * m.scale)
    x = x * gate
    if getattr(m, "same_pad", False):
        from timm.layers.padding import pad_same
        x = pad_same(x, m.kernel_size, m.stride, m.dilation)
    return F.conv2d(x, w, m.bias, m.stride, m.padding, m.dilation, m.groups)


def _register() -> None:
    types = _std_conv_types()
    is_std = lambda m: isinstance(m, types)
    for base, kind in (("conv", lambda m: True), ("grouped_conv", is_grouped),
                       ("depthwise_conv", is_depthwise)):
        rule = LAYER_RULES.get(base)
        register_layer_rule(f"std_{base}", replace(
            rule, cost=_with_standardisation(rule.cost), output_tensors=("gain",),
            gated_forward=_gated_forward if base == "conv" else None,
            applies=lambda m, kind=kind: is_std(m) and kind(m)))


_register()
