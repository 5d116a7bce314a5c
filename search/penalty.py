"""The differentiable penalty that pulls the run's cost targets (see supernet/targets) toward
their values: weight * sum over targets of log(figure / target)^2, two-sided and scale-free."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from maskednas.supernet.targets import COST_TARGETS, TargetError, resolve_targets

UnreachableTargetError = TargetError  # the name the search's callers catch
__all__ = ["CostPenalty", "UnreachableTargetError", "resolve_targets", "bind_targets"]


def bind_targets(names, net, latency=None, batch: int = 1) -> dict:
    """The registered targets of these names, bound to `net` (and the run's latency table)."""
    return {name: COST_TARGETS.get(name)(net, latency, batch) for name in names}


class CostPenalty:
    """`targets`: name -> absolute value (`resolve_targets`); an empty mapping: no penalty."""

    def __init__(self, net, targets: Mapping[str, float], weight: float, latency=None,
                 batch: int = 1) -> None:
        self.targets, self.weight = dict(targets), weight
        self.bound = bind_targets(self.targets, net, latency, batch)

    def figures(self, weights, widths) -> dict[str, torch.Tensor]:
        """Each target's differentiable figure at this point (op weights and widths)."""
        return {name: target.value(weights, widths) for name, target in self.bound.items()}

    def __call__(self, weights, widths) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        figures = self.figures(weights, widths)
        terms = [torch.log(figures[name] / value) ** 2 for name, value in self.targets.items()]
        # on the figures' device: no host tensor in the hot loop
        return (self.weight * sum(terms) if terms else torch.zeros(())), figures
