"""BatchNorm (1d and 2d): per channel, so a pruned channel needs no gate here (its readers gate
it). In eval mode fvcore counts 2 per element with affine parameters, 1 without."""
from __future__ import annotations

import math

from torch import nn

from maskednas.ops.cost import Cost
from maskednas.ops.layer_rules.base import LayerRule, register_layer_rule


def _cost(m: nn.BatchNorm2d, c_in, c, shape_in, shape_out) -> Cost:
    # per channel, every element of a traced sample (batch 1): (1, C, H, W), (1, C), or LeViT's
    # tokens folded into the batch, (L, C)
    positions = math.prod(shape_in) // m.num_features
    return Cost((2 if m.affine else 1) * c * positions, 2 * c if m.affine else 0)


register_layer_rule("batchnorm", LayerRule(nn.BatchNorm2d, lambda m, side: m.num_features, _cost,
                                           same_channels=True, width_attributes=("num_features",)))
register_layer_rule("batchnorm1d", LayerRule(nn.BatchNorm1d, lambda m, side: m.num_features, _cost,
                                             same_channels=True, width_attributes=("num_features",)))
