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

from export.architecture import Architecture
from ops.masks import KEEP_LOGIT, WidthRounding


@dataclass
class Derivation:
    arch: Architecture
    ops: Any  # the space's derived ops (macro: layer name -> op; DARTS: the genotype)
    keep: dict[str, torch.Tensor]  # channel group -> kept channel indices, ascending


def derive(net, target_macs: float | None = None, tolerance: float = 0.03, round_to: int = 1,
           min_channels: int = 1, mean=(), std=(), promote_ops: bool = True) -> Derivation:
    if min_channels < 1:
        raise ValueError(f"min_channels must be >= 1, got {min_channels}")
    with torch.no_grad():
        ops = net.derive_ops()
        if promote_ops and target_macs is not None:
            ops = _ops_reaching(net, ops, (1 - tolerance) * target_macs)
    logits, counts_above, macs = _channel_rule(net, ops, WidthRounding(round_to, min_channels))
    counts = counts_above(KEEP_LOGIT)  # the channels each mask keeps, as the penalty counts them
    if target_macs is not None and abs(macs(counts) - target_macs) > tolerance * target_macs:
        counts = counts_above(_threshold_for_target(counts_above, macs, logits, target_macs))
        reached = macs(counts)
        if abs(reached - target_macs) > tolerance * target_macs:
            warnings.warn(f"the chosen ops cannot meet the MACs target {target_macs:,.0f} within "
                          f"{tolerance:.0%}: the closest is {reached:,.0f} MACs", stacklevel=2)
    keep = {g: net.keep_channels(g, lg, counts[g]) for g, lg in logits.items()}
    return Derivation(net.architecture(ops, counts, mean, std), ops, keep)


def hold_target(net, target_macs: float, tolerance: float = 0.03,
                rounding: WidthRounding = WidthRounding()) -> tuple[float, float]:
    """Move a supernet whose derived network is more than `tolerance` off `target_macs` back onto
    it: every mask logit is shifted by one common offset, so that the channels kept (logit >= 0)
    are those the discretizer's global ranking would keep. The search calls it between epochs once
    it has reached its target, so that it ends there and derivation changes nothing. Returns the
    offset subtracted (0.0 when the network was within the tolerance) and the MACs of the network
    the masks keep afterwards."""
    with torch.no_grad():
        logits, counts_above, macs = _channel_rule(net, net.derive_ops(), rounding)
        reached = macs(counts_above(KEEP_LOGIT))
        if abs(reached - target_macs) <= tolerance * target_macs:
            return 0.0, reached
        offset = _threshold_for_target(counts_above, macs, logits, target_macs)
        reached = macs(counts_above(offset))  # before the shift: `logits` may share its memory
        for mask in net.masks.values():
            mask.logits.sub_(offset)
    return offset, reached


def _channel_rule(net, ops, rounding: WidthRounding):
    """The mask logits of the groups `ops` uses (on the CPU); counts_above(threshold): each
    group's width keeping the logits >= threshold, rounded; macs(counts): the MACs of `ops` at
    those widths."""
    logits = {g: net.masks[g].logits.detach().float().cpu() for g in net.used_groups(ops)}

    def counts_above(threshold: float) -> dict[str, int]:
        return {g: rounding(int((lg >= threshold).sum()), lg.numel(), net.channel_step(g))
                for g, lg in logits.items()}

    def macs(counts: dict[str, int]) -> float:
        return net.architecture(ops, counts).cost().macs

    return logits, counts_above, macs


def _ops_reaching(net, ops, floor: float, iterations: int = 40):
    """`ops`, or, if their full-width network has fewer than `floor` MACs, the ops of the
    least-tilted scores logit + lambda * log(1 + MACs) whose full-width network reaches it."""
    widths = net.full_widths()

    def full_macs(candidate) -> float:
        return net.architecture(candidate, widths).cost().macs

    if full_macs(ops) >= floor:
        return ops
    logits = {k: v.detach().double().cpu() for k, v in net.op_logits().items()}
    cost = {k: torch.log1p(v.double().cpu()) for k, v in net.op_scores(widths).items()}
    tilted = lambda lam: net.derive_ops({k: logits[k] + lam * cost[k] for k in logits})
    lo, hi = 0.0, 1.0
    while full_macs(tilted(hi)) < floor:
        hi *= 2
        if hi > 1e6:  # even the costliest choices cannot reach it: keep the searched ops
            return ops
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if full_macs(tilted(mid)) >= floor else (mid, hi)
    promoted = tilted(hi)
    warnings.warn(f"the searched ops reach only {full_macs(ops):,.0f} MACs at full width, below "
                  f"the target; the least confident choices were moved to costlier ops "
                  f"({full_macs(promoted):,.0f} MACs at full width)", stacklevel=3)
    return promoted


def _threshold_for_target(counts_above, macs, logits, target: float) -> float:
    """One global logit threshold, by bisection over the ranked logits, whose kept channels come
    closest to `target` MACs; it lies halfway between the last logit kept and the next, so that
    shifting the logits by it leaves none exactly on the keep threshold."""
    ranked = torch.sort(torch.cat(list(logits.values())), descending=True).values.tolist()
    between = lambda n: (ranked[n - 1] + ranked[n]) / 2 if n < len(ranked) else ranked[-1] - 1.0
    lo, hi = 1, len(ranked)  # keep the n highest: invariant macs(lo) <= target < macs(hi)
    if macs(counts_above(ranked[-1])) <= target:
        return between(len(ranked))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if macs(counts_above(ranked[mid - 1])) <= target:
            lo = mid
        else:
            hi = mid
    return min((between(lo), between(hi)), key=lambda t: abs(macs(counts_above(t)) - target))
