"""Latency: milliseconds per forward pass on the run's latency device, runtime and batch, as the
run's latency table predicts it (a sum of measured parts; see latency/)."""
from __future__ import annotations

from maskednas.supernet.base import Supernet
from maskednas.supernet.targets.base import CostTarget, TargetError, register_cost_target


@register_cost_target
class LatencyMs(CostTarget):
    name, label, unit, priority = "latency_ms", "latency", "ms", 3
    needs_latency_table = True

    @classmethod
    def unavailable(cls, space: type) -> str | None:
        if space.latency_parts is Supernet.latency_parts:
            return "has no latency model (it declares no latency parts)"
        return None

    def value(self, weights, widths):
        return self.latency.ms(weights, widths)

    def of(self, arch) -> float:
        return self.latency.architecture_ms(arch)

    def op_scores(self, widths):
        return self.latency.op_scores(widths)

    def dense(self) -> float:
        return self.latency.dense_ms()

    @classmethod
    def show(cls, value: float) -> str:
        return f"{value:.4g} ms"

    def where(self) -> str:
        m = self.latency.meta
        return f" on {m['device']} ({m['runtime']}, batch {m['batch']})"

    def check(self, value: float, min_channels: int = 1) -> None:
        dense, fastest = self.dense(), self.smallest(min_channels)
        if value < fastest:
            raise TargetError(
                f"the latency target {value:.4g} ms is below the fastest network this search space "
                f"can reach{self.where()}: {fastest:.4g} ms with every layer at its fastest op and "
                f"{min_channels} channel(s) per group (the dense network takes {dense:.4g} ms)")
        if value > dense:
            raise TargetError(
                f"the latency target {value:.4g} ms is above the dense network's {dense:.4g} ms"
                f"{self.where()}; latency targets must be in [{fastest:.4g}, {dense:.4g}] ms")
