"""The layer-rule record and its registry (see the package docstring)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from maskednas.common import Registry
from maskednas.ops.cost import Cost

LAYER_RULES = Registry("layer rule")


@dataclass(frozen=True)
class LayerRule:
    """How the user-network pruner treats one layer type (fields below).

    >>> from torch import nn
    >>> from maskednas import rule_for
    >>> rule = rule_for(nn.Conv2d(4, 8, 3))
    >>> rule.channels(nn.Conv2d(4, 8, 3), "input"), rule.cost(nn.Conv2d(4, 8, 3), 2, 8, (1, 4, 6, 6), (1, 8, 4, 4))
    (4, Cost(macs=2304.0, params=152.0))
    """
    layer_type: type
    # the layer's channel count on a side ("input" or "output")
    channels: Callable[[nn.Module, str], int]
    # exact cost at these input/output widths (ints, floats or tensors) and traced shapes
    cost: Callable[[nn.Module, Any, Any, tuple, tuple], Cost]
    # its input and output channels are the same ones (norms, depthwise convs): one width
    same_channels: bool = False
    # (module, x, gate vector) -> the input it should see: how a pruned channel is kept out of a
    # layer that mixes channels (None: the layer does not mix them, nothing to gate)
    gate_input: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # (module, x, gate vector) -> its output from the gated input, where gating the input is not
    # enough (a weight standardised over the input channels): replaces `gate_input`'s effect
    gated_forward: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # (module, x, gate vector) -> its output with gate-weighted statistics (norms over channels)
    normalize: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # how many equal, contiguous partitions its channels fall into that pruning must respect
    # (GroupNorm's groups, a grouped convolution's groups); 1: none
    partitions: Callable[[nn.Module], int] = lambda m: 1
    # whether pruning removes whole partitions (a grouped convolution's groups) rather than
    # keeping equally many channels in each (GroupNorm's)
    whole_partitions: bool = False
    # the plain int attributes slimming changes (rebuilt from the export's record)
    width_attributes: tuple[str, ...] = ()
    # sets those of them Torch-Pruning does not (it resizes the tensors) after slimming
    resized: Callable[[nn.Module], None] | None = None
    # why this layer cannot be pruned (None: it can)
    unsupported: Callable[[nn.Module], str | None] = lambda m: None
    # whether the rule covers this instance of `layer_type`
    applies: Callable[[nn.Module], bool] = lambda m: True
    # per-output-channel tensors (dim 0) Torch-Pruning's pruner leaves as they are: sliced with
    # the output channels when the layer is slimmed
    output_tensors: tuple[str, ...] = ()


def register_layer_rule(name: str, rule: LayerRule) -> LayerRule:
    """Register `rule` under `name`; it takes precedence over rules registered before it.

    >>> from torch import nn
    >>> from maskednas import LayerRule, register_layer_rule, rule_for
    >>> from maskednas.ops import Cost
    >>> free = register_layer_rule("free_linear", LayerRule(  # a linear layer counted as free
    ...     nn.Linear, lambda m, side: m.in_features, lambda m, *widths: Cost(0, 0)))
    >>> rule_for(nn.Linear(3, 3)) is free
    True
    >>> from maskednas.ops.layer_rules import LAYER_RULES; del LAYER_RULES._obj_map["free_linear"]
    """
    if name in LAYER_RULES.names():
        raise KeyError(f"a layer rule named {name!r} is registered already")
    return LAYER_RULES.add(name, rule)


def rule_for(module: nn.Module) -> LayerRule | None:
    """The most recently registered rule that applies to `module` (None: no rule does).

    >>> from torch import nn
    >>> from maskednas import LAYER_RULES, rule_for
    >>> rule_for(nn.Conv2d(8, 8, 3, groups=8)) is LAYER_RULES.get("depthwise_conv")
    True
    >>> rule_for(nn.ReLU()) is None
    True
    """
    return LAYER_RULES.newest_for(module)


def width_attributes() -> tuple[str, ...]:
    """Every registered layer and attention rule's width attributes (what an export records of
    a pruned layer)."""
    from maskednas.ops.attention_rules import attention_width_attributes
    return tuple(dict.fromkeys([*(a for n in LAYER_RULES.names() for a in LAYER_RULES.get(n).width_attributes),
                                *attention_width_attributes()]))


def affine_vectors(norm: nn.Module) -> int:
    """How many per-channel vectors a norm holds: weight and bias, or a weight alone (timm's
    norms without a bias), or none."""
    return (getattr(norm, "weight", None) is not None) + (getattr(norm, "bias", None) is not None)
