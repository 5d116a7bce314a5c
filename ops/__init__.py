"""Candidate operations, their registry and exact costs, channel masks and the mixed op."""
from ops.blocks import Head, Stem
from ops.candidates import OPS, FactorizedReduce, OpSpec, SharedInput, build_op, get_op, is_zero
from ops.cost import Cost
from ops.masks import ChannelMask, WidthRounding, apply_gate
from ops.mixed import MixedOp, weighted_sum
from ops.registry import Registry

__all__ = ["OPS", "FactorizedReduce", "OpSpec", "SharedInput", "build_op", "get_op", "is_zero", "Cost",
           "ChannelMask", "WidthRounding", "apply_gate", "MixedOp", "weighted_sum", "Registry", "Stem", "Head"]
