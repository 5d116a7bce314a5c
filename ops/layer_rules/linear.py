"""Linear: its input gated feature by feature; applied to any leading dimensions."""
from __future__ import annotations

import math

from torch import nn

from maskednas.ops.cost import Cost
from maskednas.ops.layer_rules.base import LayerRule, register_layer_rule


def _cost(m: nn.Linear, c_in, c_out, shape_in, shape_out) -> Cost:
    rows = math.prod(shape_in[1:]) // m.in_features  # tokens per sample
    return Cost(c_in * c_out * rows, c_in * c_out + (c_out if m.bias is not None else 0))


register_layer_rule("linear", LayerRule(
    nn.Linear, lambda m, side: m.in_features if side == "input" else m.out_features, _cost,
    gate_input=lambda m, x, gate: x * gate.to(x.dtype),
    width_attributes=("in_features", "out_features")))
