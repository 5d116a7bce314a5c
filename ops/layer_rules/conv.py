"""Conv2d: dense (its input gated channel by channel) and depthwise (channel-wise: nothing to
gate, one width). Grouped convolutions have a rule of their own (grouped_conv.py)."""
from __future__ import annotations

from torch import nn

from maskednas.ops.cost import Cost
from maskednas.ops.layer_rules.base import LayerRule, register_layer_rule


def is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _channels(m: nn.Conv2d, side: str) -> int:
    return m.in_channels if side == "input" else m.out_channels


def _cost(m: nn.Conv2d, c_in, c_out, shape_in, shape_out) -> Cost:
    k = m.kernel_size[0] * m.kernel_size[1]
    weights = c_out * (k if is_depthwise(m) else k * c_in / m.groups)
    return Cost(weights * shape_out[-2] * shape_out[-1], weights + (c_out if m.bias is not None else 0))


def _gate(m, x, gate):
    return x * gate.view(1, -1, 1, 1).to(x.dtype)


WIDTHS = ("in_channels", "out_channels", "groups")
register_layer_rule("conv", LayerRule(nn.Conv2d, _channels, _cost, gate_input=_gate,
                                      width_attributes=WIDTHS))
register_layer_rule("depthwise_conv", LayerRule(nn.Conv2d, _channels, _cost, same_channels=True,
                                                width_attributes=WIDTHS, applies=is_depthwise))
