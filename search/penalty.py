"""Cost targets and the differentiable penalty that pulls the expected cost toward them."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from maskednas.ops import Cost
from maskednas.supernet.cost_model import dense_cost, smallest_cost


class UnreachableTargetError(ValueError):
    pass


@dataclass(frozen=True)
class Targets:
    macs: float | None
    params: float | None
    latency_ms: float | None = None

    def as_dict(self) -> dict:
        return {"macs": self.macs, "params": self.params, "latency_ms": self.latency_ms}


def resolve_targets(target, net, min_channels: int = 1, latency=None) -> Targets:
    """Absolute targets, or fractions of the dense network (its widest single path). Fails
    before any training when a target is outside what the space can reach: below its smallest
    network or above its dense one. A latency target needs the run's `latency` model."""
    latency_ms = resolve_latency_target(target, net, min_channels, latency)
    dense, smallest = dense_cost(net), smallest_cost(net, min_channels)
    macs = target.macs if target.macs is not None else (
        target.macs_fraction * dense.macs if target.macs_fraction is not None else None)
    params = target.params if target.params is not None else (
        target.params_fraction * dense.params if target.params_fraction is not None else None)
    for what, value, low in (("MACs", macs, smallest.macs), ("params", params, smallest.params)):
        if value is not None and value < low:
            raise UnreachableTargetError(
                f"the {what} target {value:,.0f} is below the smallest network this search space "
                f"can reach ({low:,.0f} {what} with every layer at its cheapest op and "
                f"{min_channels} channel(s) per group); the dense network has "
                f"{getattr(dense, what.lower()):,.0f}")
        high = getattr(dense, what.lower())
        if value is not None and value > high:
            raise UnreachableTargetError(
                f"the {what} target {value:,.0f} is above the dense network of this search space "
                f"({high:,.0f} {what}: every group at full width, every layer its costliest op); "
                f"targets must be in [{low:,.0f}, {high:,.0f}]")
    return Targets(macs, params, latency_ms)


def resolve_latency_target(target, net, min_channels: int, latency) -> float | None:
    """search.target.latency_ms, or latency_fraction of the dense network's table latency;
    refused outside [the fastest network's, the dense network's] table latency."""
    if target.latency_ms is None and target.latency_fraction is None:
        return None
    dense, fastest = latency.dense_ms(), latency.fastest_ms(min_channels)
    value = target.latency_ms if target.latency_ms is not None else target.latency_fraction * dense
    where = f"on {latency.meta['device']} ({latency.meta['runtime']}, batch {latency.meta['batch']})"
    if value < fastest:
        raise UnreachableTargetError(
            f"the latency target {value:.4g} ms is below the fastest network this search space "
            f"can reach {where}: {fastest:.4g} ms with every layer at its fastest op and "
            f"{min_channels} channel(s) per group (the dense network takes {dense:.4g} ms)")
    if value > dense:
        raise UnreachableTargetError(
            f"the latency target {value:.4g} ms is above the dense network's {dense:.4g} ms {where}; "
            f"latency targets must be in [{fastest:.4g}, {dense:.4g}] ms")
    return value


class CostPenalty:
    """weight * sum over targets of log(estimate / target)^2: two-sided, scale-free."""

    def __init__(self, targets: Targets, weight: float) -> None:
        self.targets, self.weight = targets, weight

    def __call__(self, cost: Cost, latency_ms: torch.Tensor | None = None) -> torch.Tensor:
        pairs = ((cost.macs, self.targets.macs), (cost.params, self.targets.params),
                 (latency_ms, self.targets.latency_ms))
        terms = [torch.log(value / target) ** 2 for value, target in pairs
                 if target is not None]  # on the cost's device: no host tensor in the hot loop
        return self.weight * sum(terms) if terms else torch.zeros(())
