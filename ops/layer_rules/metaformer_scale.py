"""timm's MetaFormer `Scale` (PoolFormer, ConvFormer, CAFormer layer scales): one weight per
channel, viewed to its `shape` attribute, which slimming must shrink with the weight. fvcore
counts no MACs for the multiplication: its cost is its vector."""
from __future__ import annotations

from timm.models.metaformer import Scale

from maskednas.ops.cost import Cost
from maskednas.ops.layer_rules.base import LayerRule, register_layer_rule

register_layer_rule("metaformer_scale", LayerRule(
    Scale, lambda m, side: m.scale.numel(), lambda m, c_in, c, shape_in, shape_out: Cost(0, c),
    same_channels=True, width_attributes=("shape",),
    resized=lambda m: setattr(m, "shape", (m.scale.numel(), *m.shape[1:]))))
