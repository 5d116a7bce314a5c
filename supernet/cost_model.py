"""Differentiable cost of a whole search space.

Each space computes its cost from op weights and channel counts (`net.cost`): the expectation
over each choice's op distribution of every op's exact cost at the given widths. Costs are
bilinear in channel counts, so with one-hot op weights and 0/1 gates this is exactly the cost of
the discrete network, the number fvcore counts on the compact model.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ops import Cost, get_op

Channels = Mapping[str, Any]  # group -> channel count (int, float or tensor)


def layer_op_costs(layer, channels: Channels) -> list[Cost]:
    """Cost of every candidate of a macro layer at the given group widths."""
    size = layer.in_size
    costs = []
    for name, group in zip(layer.names, layer.hidden_groups):
        hidden = channels[group] if group else None
        costs.append(get_op(name).cost(channels[layer.in_group], channels[layer.out_group],
                                       layer.stride, size, size, hidden=hidden, tied=layer.residual))
    return costs


def expected_cost(net) -> Cost:
    """Expected MACs and params under the current alpha and masks (differentiable)."""
    channels = {name: gate.sum() for name, gate in net.gates().items()}
    return net.cost(net.op_weights(), channels)


def _straight_through(soft: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """Value of `hard` exactly (the zero is added last), gradient of `soft`."""
    return hard.to(soft.dtype) + (soft - soft.detach())


def discrete_cost(net) -> Cost:
    """Cost of the architecture a derivation would give now (the space's `select` of the op
    weights, channels with gate >= 1/2), with straight-through gradients of the soft relaxation.

    The soft expectation can meet a target with diffuse op weights (a mixture of an expensive op
    and `zero`) whose derived network is far off it; penalising this value instead aims the
    penalty at the network that will actually be derived and pushes on its masks too.
    """
    soft = net.op_weights()
    hard = net.select(soft)
    weights = {k: _straight_through(w, hard[k]) for k, w in soft.items()}
    channels = {name: _straight_through(g, g >= 0.5).sum() for name, g in net.gates().items()}
    return net.cost(weights, channels)


def full_widths(net) -> dict[str, int]:
    return {name: mask.channels for name, mask in net.masks.items()}


def single_path_weights(net, widths: Channels, largest: bool) -> dict[str, torch.Tensor]:
    """One-hot weights of the most (or least) expensive architecture the space can derive."""
    scores = net.op_scores(widths)
    return net.select({k: v if largest else -v for k, v in scores.items()})


def _exact(cost: Cost) -> Cost:
    return Cost(round(float(cost.macs)), round(float(cost.params)))


def dense_cost(net) -> Cost:
    """The widest single path: every group at full width, every choice its most expensive op.
    This is the 'dense' reference that fractional targets and speed-up figures refer to."""
    widths = full_widths(net)
    return _exact(net.cost(single_path_weights(net, widths, largest=True), widths))


def smallest_cost(net, min_channels: int = 1) -> Cost:
    """The cheapest reachable network: every group at `min_channels`, every choice its cheapest op."""
    widths = {name: min(max(min_channels, net.channel_step(name)), c)
              for name, c in full_widths(net).items()}
    return _exact(net.cost(single_path_weights(net, widths, largest=False), widths))
