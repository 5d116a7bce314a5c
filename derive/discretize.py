"""Derive a discrete architecture from a searched supernet.

Ops: the space's rule (`net.derive_ops()`; macro: the highest alpha per layer; DARTS: per node the
two strongest edges, each with its strongest non-zero op). Channels: those each mask keeps
(logit >= 0, gate >= 1/2). When that misses the MACs target by more than the tolerance, all mask
logits of the network are ranked together and a single threshold is searched (bisection: cost
grows with the number of channels kept) so that the kept channels meet the target. No group ever
keeps fewer than `min_channels`.

When the chosen ops are too cheap to reach the target even at full width (a short or
over-penalised search), `promote_ops` moves the least confident choices to costlier ops: op
scores are tilted by lambda * log(1 + MACs), and the smallest lambda whose full-width network
reaches the target is taken (bisection), so the choices whose alpha margins are smallest flip first.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from maskednas.export.architecture import Architecture
from maskednas.ops.masks import KEEP_LOGIT, WidthRounding
from maskednas.supernet.targets import COST_TARGETS, CostTarget


@dataclass(frozen=True)
class Budget:
    """The figure a derivation meets: a cost target bound to the supernet (supernet/targets)
    and its value."""
    cost: CostTarget
    target: float

    @property
    def name(self) -> str:
        return self.cost.label

    @property
    def metric(self) -> str:  # the search loop's per-epoch value of the derived network
        return f"discrete_{self.cost.name}"

    def of(self, arch) -> float:
        return self.cost.of(arch)

    def op_scores(self, widths) -> dict[str, torch.Tensor]:
        return self.cost.op_scores(widths)

    def show(self, value: float) -> str:
        return self.cost.show(value)


def budget(name: str, net, value: float, latency=None, batch: int = 1) -> Budget:
    """The registered target `name` bound to `net` (latency targets: to the run's table)."""
    return Budget(COST_TARGETS.get(name)(net, latency, batch), value)


def macs_budget(net, target: float) -> Budget:
    return budget("macs", net, target)


def search_budget(net, targets, latency=None, batch: int = 1) -> Budget | None:
    """The target a search holds and derivation meets: the run's target of the highest priority
    (latency, then peak memory, then MACs, then params)."""
    ranked = sorted((COST_TARGETS.get(n).priority, n) for n in targets)
    if not ranked:
        return None
    name = ranked[-1][1]
    return budget(name, net, targets[name], latency, batch)


@dataclass
class Derivation:
    arch: Architecture
    ops: Any  # the space's derived ops (macro: layer name -> op; DARTS: the genotype)
    keep: dict[str, torch.Tensor]  # channel group -> kept channel indices, ascending


def _as_budget(net, target: float | Budget | None) -> Budget | None:
    return macs_budget(net, target) if isinstance(target, (int, float)) else target


def derive(net, target: float | Budget | None = None, tolerance: float = 0.03, round_to: int = 1,
           min_channels: int = 1, mean=(), std=(), promote_ops: bool = True) -> Derivation:
    """`target`: MACs (a number) or a `Budget` (any cost target); None: the masks' own widths."""
    if min_channels < 1:
        raise ValueError(f"min_channels must be >= 1, got {min_channels}")
    budget = _as_budget(net, target)
    with torch.no_grad():
        ops = net.derive_ops()
        if promote_ops and budget is not None:
            ops = _ops_reaching(net, ops, (1 - tolerance) * budget.target, budget)
    logits, counts_above, cost = _channel_rule(net, ops, WidthRounding(round_to, min_channels),
                                               budget)
    counts = counts_above(KEEP_LOGIT)  # the channels each mask keeps, as the penalty counts them
    if budget is not None and abs(cost(counts) - budget.target) > tolerance * budget.target:
        counts = counts_above(_threshold_for_target(counts_above, cost, logits, budget.target))
        reached = cost(counts)
        if abs(reached - budget.target) > tolerance * budget.target:
            warnings.warn(f"the chosen ops cannot meet the {budget.name} target "
                          f"{budget.show(budget.target)} within {tolerance:.0%}: the closest is "
                          f"{budget.show(reached)}", stacklevel=2)
    keep = {g: net.keep_channels(g, lg, counts[g]) for g, lg in logits.items()}
    return Derivation(net.architecture(ops, counts, mean, std), ops, keep)


def hold_target(net, target: float | Budget, tolerance: float = 0.03,
                rounding: WidthRounding = WidthRounding()) -> tuple[float, float]:
    """Move a supernet whose derived network is more than `tolerance` off `target` (MACs, or a
    `Budget`) back onto it: every mask logit is shifted by one common offset, so that the
    channels kept (logit >= 0) are those the discretizer's global ranking would keep. The search
    calls it between epochs once it has reached its target, so that it ends there and derivation
    changes nothing. Returns the offset subtracted (0.0 when the network was within the
    tolerance) and the cost of the network the masks keep afterwards."""
    budget = _as_budget(net, target)
    with torch.no_grad():
        logits, counts_above, cost = _channel_rule(net, net.derive_ops(), rounding, budget)
        reached = cost(counts_above(KEEP_LOGIT))
        if abs(reached - budget.target) <= tolerance * budget.target:
            return 0.0, reached
        offset = _threshold_for_target(counts_above, cost, logits, budget.target)
        reached = cost(counts_above(offset))  # before the shift: `logits` may share its memory
        for mask in net.masks.values():
            mask.logits.sub_(offset)
    return offset, reached


def _channel_rule(net, ops, rounding: WidthRounding, budget: Budget | None):
    """The mask logits of the groups `ops` uses (on the CPU); counts_above(threshold): each
    group's width keeping the logits >= threshold, rounded; cost(counts): the budget's figure
    (MACs by default) of `ops` at those widths, which grows with every count."""
    logits = {g: net.masks[g].logits.detach().float().cpu() for g in net.used_groups(ops)}
    of = budget.of if budget is not None else (lambda arch: arch.cost().macs)

    def counts_above(threshold: float) -> dict[str, int]:
        return {g: rounding(int((lg >= threshold).sum()), lg.numel(), net.channel_step(g),
                            net.channel_unit(g))
                for g, lg in logits.items()}

    def cost(counts: dict[str, int]) -> float:
        return of(net.architecture(ops, counts))

    return logits, counts_above, cost


def _ops_reaching(net, ops, floor: float, budget: Budget, iterations: int = 40):
    """`ops`, or, if their full-width network costs less than `floor`, the ops of the
    least-tilted scores logit + lambda * log(1 + op cost) whose full-width network reaches it."""
    widths = net.full_widths()

    def full_cost(candidate) -> float:
        return budget.of(net.architecture(candidate, widths))

    if full_cost(ops) >= floor:
        return ops
    logits = {k: v.detach().double().cpu() for k, v in net.op_logits().items()}
    cost = {k: torch.log1p(v.double().cpu()) for k, v in budget.op_scores(widths).items()}
    tilted = lambda lam: net.derive_ops({k: logits[k] + lam * cost[k] for k in logits})
    lo, hi = 0.0, 1.0
    while full_cost(tilted(hi)) < floor:
        hi *= 2
        if hi > 1e6:  # even the costliest choices cannot reach it: keep the searched ops
            return ops
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if full_cost(tilted(mid)) >= floor else (mid, hi)
    promoted = tilted(hi)
    warnings.warn(f"the searched ops reach only {budget.show(full_cost(ops))} at full width, "
                  f"below the target; the least confident choices were moved to costlier ops "
                  f"({budget.show(full_cost(promoted))} at full width)", stacklevel=3)
    return promoted


def _threshold_for_target(counts_above, cost, logits, target: float) -> float:
    """One global logit threshold, by bisection over the ranked logits, whose kept channels come
    closest to `target` (MACs or ms); it lies halfway between the last logit kept and the next, so that
    shifting the logits by it leaves none exactly on the keep threshold."""
    if not logits:  # no channel group: only the ops decide the cost
        return 0.0
    ranked = torch.sort(torch.cat(list(logits.values())), descending=True).values.tolist()
    between = lambda n: (ranked[n - 1] + ranked[n]) / 2 if n < len(ranked) else ranked[-1] - 1.0
    lo, hi = 1, len(ranked)  # keep the n highest: invariant cost(lo) <= target < cost(hi)
    if cost(counts_above(ranked[-1])) <= target:
        return between(len(ranked))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cost(counts_above(ranked[mid - 1])) <= target:
            lo = mid
        else:
            hi = mid
    return min((between(lo), between(hi)), key=lambda t: abs(cost(counts_above(t)) - target))
