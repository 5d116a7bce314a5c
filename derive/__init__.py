"""From a searched supernet to a compact model: the discretizer (which ops, how many channels)
and the physical slimmer (copy the kept weights into real, smaller tensors); and the baselines
that derive a network at the same MACs by other rules (uniform width, L1 norms, random)."""
from maskednas.derive.discretize import Derivation, derive
from maskednas.derive.slim import slim

__all__ = ["Derivation", "derive", "slim"]
