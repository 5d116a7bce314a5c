"""Derive a discrete architecture from a searched supernet.

Ops: the space's rule (macro: the highest alpha per layer; DARTS: per node the two strongest
edges, each with its strongest non-zero op). Channels: those whose mask gate is at least one half. When that
misses the MACs target by more than the tolerance, all mask logits of the network are ranked
together and a single threshold is searched (bisection: cost grows with the number of channels
kept) so that the kept channels meet the target. No group ever keeps fewer than `min_channels`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from timm.layers import make_divisible

from export.architecture import Architecture, LayerChoice
from export.cells import cell_chain
from ops import get_op


@dataclass
class Derivation:
    arch: Architecture
    ops: dict  # macro: layer name -> op; DARTS: the genotype {"normal": [(op, source)], ...}
    keep: dict[str, torch.Tensor]  # channel group -> kept channel indices, ascending


def architecture_from_counts(net, ops, counts: dict[str, int], mean=(), std=()) -> Architecture:
    if net.space_name == "darts":
        cells = cell_chain(counts["stem"], [counts[c.group] for c in net.cells],
                           [c.reduction for c in net.cells], ops, net.multiplier)
        return Architecture(net.in_channels, net.input_size, net.num_classes, counts["stem"], (),
                            tuple(mean), tuple(std), space=net.space_name, cells=cells)
    layers = []
    for layer in net.layers:
        op = ops[layer.name]
        spec, group = get_op(op), layer.hidden_groups[layer.names.index(op)]
        layers.append(LayerChoice(op, counts[layer.in_group], counts[layer.out_group], layer.stride,
                                  layer.residual, counts[group] if group else None,
                                  spec.kernel, spec.dilation))
    return Architecture(net.in_channels, net.input_size, net.num_classes, counts["stem"],
                        tuple(layers), tuple(mean), tuple(std), space=net.space_name)


def _round(count: int, size: int, round_to: int, min_channels: int) -> int:
    count = max(count, min_channels)
    if round_to > 1:
        count = make_divisible(count, round_to)
    return min(count, size)


def derive(net, target_macs: float | None = None, tolerance: float = 0.03, round_to: int = 1,
           min_channels: int = 1, mean=(), std=()) -> Derivation:
    if min_channels < 1:
        raise ValueError(f"min_channels must be >= 1, got {min_channels}")
    with torch.no_grad():
        ops = net.derive_ops()
        logits = {g: net.masks[g].logits.detach().float().cpu() for g in net.used_groups(ops)}

    def counts_above(threshold: float) -> dict[str, int]:
        return {g: _round(int((lg >= threshold).sum()), lg.numel(),
                          math.lcm(round_to, net.channel_step(g)), min_channels)
                for g, lg in logits.items()}

    def macs(counts: dict[str, int]) -> float:
        return architecture_from_counts(net, ops, counts).cost().macs

    counts = counts_above(0.0)  # logit >= 0: gate >= 1/2, as the penalty counts them
    if target_macs is not None and abs(macs(counts) - target_macs) > tolerance * target_macs:
        counts = _counts_for_target(counts_above, macs, logits, target_macs)
        reached = macs(counts)
        if abs(reached - target_macs) > tolerance * target_macs:
            warnings.warn(f"the chosen ops cannot meet the MACs target {target_macs:,.0f} within "
                          f"{tolerance:.0%}: the closest is {reached:,.0f} MACs", stacklevel=2)
    keep = {g: net.keep_channels(g, lg, counts[g]) for g, lg in logits.items()}
    return Derivation(architecture_from_counts(net, ops, counts, mean, std), ops, keep)


def _counts_for_target(counts_above, macs, logits, target: float) -> dict[str, int]:
    """Bisection over one global logit threshold: keep the `n` highest-ranked channels."""
    ranked = torch.sort(torch.cat(list(logits.values())), descending=True).values.tolist()
    lo, hi = 1, len(ranked)  # invariant: macs(lo) <= target < macs(hi), unless at the ends
    if macs(counts_above(ranked[-1])) <= target:
        return counts_above(ranked[-1])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if macs(counts_above(ranked[mid - 1])) <= target:
            lo = mid
        else:
            hi = mid
    candidates = [counts_above(ranked[lo - 1]), counts_above(ranked[hi - 1])]
    return min(candidates, key=lambda c: abs(macs(c) - target))


def dense_architecture(net, mean=(), std=()) -> Architecture:
    """The supernet's widest single path (full widths, most expensive choice everywhere) as an
    Architecture: the dense reference for MACs, params and latency."""
    from supernet.cost_model import full_widths, single_path_weights

    widths = full_widths(net)
    ops = net.derive_ops(single_path_weights(net, widths, largest=True))
    return architecture_from_counts(net, ops, widths, mean, std)
