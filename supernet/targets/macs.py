"""MACs: multiply-adds of one forward pass at batch 1, in fvcore's convention (see ops/cost.py)."""
from __future__ import annotations

from maskednas.supernet.cost_model import dense_cost, smallest_cost
from maskednas.supernet.targets.base import CostTarget, register_cost_target


@register_cost_target
class Macs(CostTarget):
    name, label, unit, priority = "macs", "MACs", "MACs", 1

    def value(self, weights, widths):
        return self.net.cost(weights, widths).macs

    def of(self, arch) -> float:
        return float(arch.cost().macs)

    def dense(self) -> float:
        return float(dense_cost(self.net).macs)

    def smallest(self, min_channels: int = 1) -> float:
        return float(smallest_cost(self.net, min_channels).macs)
