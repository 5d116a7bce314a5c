"""Differentiable cost of a whole search space, and the estimators the penalty can read.

Each space computes its cost from op weights and channel counts (`net.cost`): the expectation
over each choice's op distribution of every op's exact cost at the given widths. Costs are
bilinear in channel counts, so with one-hot op weights and 0/1 gates this is exactly the cost of
the discrete network, the number fvcore counts on the compact model.
"""
from __future__ import annotations

import torch

from ops import Cost, Registry, WidthRounding

# search.target.estimator: name -> f(net, rounding) -> the cost the penalty reads
ESTIMATORS = Registry("cost estimator")


@ESTIMATORS.named("expected")
def expected_cost(net, rounding: WidthRounding | None = None) -> Cost:
    """Expected MACs and params under the current alpha and masks (differentiable). Widths are
    the soft sums of the gates, so `rounding` (a rule for whole channel counts) does not apply."""
    channels = {name: gate.sum() for name, gate in net.gates().items()}
    return net.cost(net.op_weights(), channels)


def _straight_through(soft: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """Value of `hard` exactly (the zero is added last), gradient of `soft`."""
    return hard.to(soft.dtype) + (soft - soft.detach())


@ESTIMATORS.named("discrete")
def discrete_cost(net, rounding: WidthRounding = WidthRounding()) -> Cost:
    """Cost of the architecture a derivation would give now (the space's `select` of its op
    logits; the channels each mask keeps, rounded to a width as the discretizer rounds them:
    `min_channels`, `round_to`, the group's own step), with straight-through gradients of the
    soft relaxation.

    The soft expectation can meet a target with diffuse op weights (a mixture of an expensive op
    and `zero`) whose derived network is far off it; penalising this value instead aims the
    penalty at the network that will actually be derived and pushes on its masks too.
    """
    soft = net.op_weights()
    hard = net.select(net.op_logits())
    weights = {k: _straight_through(w, hard[k]) for k, w in soft.items()}
    gates = net.gates()
    channels = {name: _straight_through(gates[name].sum(), rounding(
        mask.kept().sum(), mask.channels, net.channel_step(name))) for name, mask in net.masks.items()}
    return net.cost(weights, channels)


def _exact(cost: Cost) -> Cost:
    return Cost(round(float(cost.macs)), round(float(cost.params)))


def dense_cost(net) -> Cost:
    """The widest single path: every group at full width, every choice its most expensive op.
    This is the 'dense' reference that fractional targets and speed-up figures refer to."""
    widths = net.full_widths()
    return _exact(net.cost(net.single_path_weights(widths, largest=True), widths))


def smallest_cost(net, min_channels: int = 1) -> Cost:
    """The cheapest reachable network: every group at `min_channels`, every choice its cheapest op."""
    widths = {name: min(max(min_channels, net.channel_step(name)), c)
              for name, c in net.full_widths().items()}
    return _exact(net.cost(net.single_path_weights(widths, largest=False), widths))
