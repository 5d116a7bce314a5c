"""Layer rules: how the pruner of users' networks (the `model` space) treats each layer type, in
the style of Torch-Pruning's `PrunerBox` / `register_customized_layer`.

A rule says, for one layer type: its channel counts, its exact cost at given widths (fvcore's
convention), how a channel gate reaches it (its input multiplied by the gate, or its statistics
weighted by it), which plain attributes change width when it is slimmed, which channel
partitions must be pruned alike, and why a layer cannot be pruned. One rule per file here;
`rule_for(module)` takes the most recently registered rule that applies, so a user's rule for
their own layer (or a better one for a torch layer) needs no edit of the library:

    >>> import torch
    >>> from torch import nn
    >>> from maskednas import LayerRule, register_layer_rule, rule_for
    >>> from maskednas.ops import Cost
    >>> class Scale(nn.Module):  # y = x * w, one weight per channel
    ...     def __init__(self, c):
    ...         super().__init__()
    ...         self.weight = nn.Parameter(torch.ones(c, 1, 1))
    ...     def forward(self, x):
    ...         return x * self.weight
    >>> rule = register_layer_rule("scale", LayerRule(
    ...     Scale, channels=lambda m, side: m.weight.shape[0], same_channels=True,
    ...     cost=lambda m, c_in, c_out, shape_in, shape_out: Cost(0, c_out)))
    >>> rule_for(Scale(4)) is rule
    True
    >>> from maskednas.ops.layer_rules import LAYER_RULES; del LAYER_RULES._obj_map["scale"]

Torch-Pruning must know how to slim the layer too (its own `register_customized_layer`) when
the layer holds parameters whose shapes change.
"""
from maskednas.ops.layer_rules.base import (LAYER_RULES, LayerRule, register_layer_rule, rule_for,
                                            width_attributes)
from maskednas.ops.layer_rules import (batchnorm, conv, grn, grouped_conv, groupnorm,  # noqa: F401
                                       layernorm, linear, metaformer_scale, rmsnorm,  # (registers them)
                                       std_conv)

__all__ = ["LAYER_RULES", "LayerRule", "register_layer_rule", "rule_for", "width_attributes"]
