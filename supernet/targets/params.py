"""Parameters of the network (weights and biases, BatchNorm affine parameters)."""
from __future__ import annotations

from maskednas.supernet.cost_model import dense_cost, smallest_cost
from maskednas.supernet.targets.base import CostTarget, register_cost_target


@register_cost_target
class Params(CostTarget):
    name, label, unit, priority = "params", "params", "params", 0

    def value(self, weights, widths):
        return self.net.cost(weights, widths).params

    def of(self, arch) -> float:
        return float(arch.cost().params)

    def dense(self) -> float:
        return float(dense_cost(self.net).params)

    def smallest(self, min_channels: int = 1) -> float:
        return float(smallest_cost(self.net, min_channels).params)
