"""Grouped Conv2d (ResNeXt, RegNet), pruned by whole groups: a group of the convolution goes with
all its input and output channels, so its input and output channel groups are one (linked when
the channel groups are found) and are kept in whole cells of `in_channels / groups` channels.
Each kept group still reads its own `in_channels / groups` inputs: the cost per output channel
does not shrink with the input width."""
from __future__ import annotations

from torch import nn

from maskednas.ops.cost import Cost
from maskednas.ops.layer_rules.base import LayerRule, register_layer_rule
from maskednas.ops.layer_rules.conv import is_depthwise


def is_grouped(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and not is_depthwise(m)


def _cost(m: nn.Conv2d, c_in, c_out, shape_in, shape_out) -> Cost:
    weights = c_out * m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
    return Cost(weights * shape_out[-2] * shape_out[-1], weights + (c_out if m.bias is not None else 0))


def _unsupported(m: nn.Conv2d) -> str | None:
    if m.in_channels != m.out_channels:
        return (f"grouped convolution with {m.in_channels} inputs and {m.out_channels} outputs "
                f"(whole groups are pruned where both are equal)")
    return None


register_layer_rule("grouped_conv", LayerRule(
    nn.Conv2d, lambda m, side: m.in_channels if side == "input" else m.out_channels, _cost,
    gate_input=lambda m, x, gate: x * gate.view(1, -1, 1, 1).to(x.dtype),
    partitions=lambda m: m.groups, whole_partitions=True,
    width_attributes=("in_channels", "out_channels", "groups"), unsupported=_unsupported,
    applies=is_grouped))
