"""Candidate operations, their registry and exact costs, channel masks and the mixed op."""
from maskednas.ops.blocks import Head, Stem
from maskednas.ops.candidates import OPS, FactorizedReduce, OpSpec, SharedInput, build_op, get_op, is_zero
from maskednas.ops.cost import Cost
from maskednas.ops.masks import ChannelMask, WidthRounding, apply_gate
from maskednas.ops.mixed import MixedOp, weighted_sum
from maskednas.common import Registry

__all__ = ["OPS", "FactorizedReduce", "OpSpec", "SharedInput", "build_op", "get_op", "is_zero", "Cost",
           "ChannelMask", "WidthRounding", "apply_gate", "MixedOp", "weighted_sum", "Registry", "Stem", "Head"]
