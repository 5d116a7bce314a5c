"""Differentiable cost of a whole search space, and the estimators the penalty can read.

Each space computes its cost from op weights and channel counts (`net.cost`): the expectation
over each choice's op distribution of every op's exact cost at the given widths. Costs are
bilinear in channel counts, so with one-hot op weights and 0/1 gates this is exactly the cost of
the discrete network, the number fvcore counts on the compact model.
"""
from __future__ import annotations

import weakref

import torch

from maskednas.ops import Cost, Registry, WidthRounding
from maskednas.ops.masks import KEEP_LOGIT
from maskednas.ops.cost_polynomial import WidthVector

# search.target.estimator: name -> f(net, rounding, surrogate_temperature) -> the op weights
# and widths (per channel group) at which the penalty reads the cost and the latency
ESTIMATORS = Registry("cost estimator")


def _straight_through(soft: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """Value of `hard` exactly (the zero is added last), gradient of `soft`."""
    return hard.detach().to(soft.dtype) + (soft - soft.detach())


def _layout(net, rounding: WidthRounding, device) -> tuple[torch.Tensor, ...]:
    """Per channel of all masks in order: its group's position; per group: size, divisor and
    minimum width."""
    cache = _LAYOUTS.setdefault(net, {})
    if (rounding, device) not in cache:
        sizes = [m.channels for m in net.masks.values()]
        cache[rounding, device] = (
            torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).to(device),
            torch.tensor(sizes, dtype=torch.float32, device=device),
            torch.tensor([float(rounding.divisor(net.channel_step(n), net.channel_unit(n))) for n in net.masks],
                         device=device),
            torch.tensor([float(rounding.minimum(net.channel_unit(n))) for n in net.masks], device=device))
    return cache[rounding, device]


_LAYOUTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _group_sums(net, values: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    return torch.zeros(len(net.masks), dtype=values.dtype, device=values.device).index_add(0, segment, values)


def _flat_logits(net) -> torch.Tensor | None:
    """All mask logits in one vector (None when a mask is hardened: its gates are its keep set)."""
    masks = list(net.masks.values())
    if not masks or any(m.hard for m in masks):
        return None
    return torch.cat([m.logits for m in masks])


def _temperature(net, temperature):
    return net.temperature if temperature is None else temperature


@ESTIMATORS.named("expected")
def expected_point(net, rounding: WidthRounding | None = None, surrogate_temperature=None):
    """Op weights and widths of the soft expectation under the current alpha and masks
    (differentiable). Widths are the soft sums of the gates, so `rounding` (a rule for whole
    channel counts) does not apply. With a `surrogate_temperature` the values are the same and
    the gradients are those at it."""
    weights = net.op_weights()
    if surrogate_temperature is not None:
        soft_weights = net.op_weights(surrogate_temperature)
        weights = {k: _straight_through(soft_weights[k], w) for k, w in weights.items()}
    logits = _flat_logits(net)
    if logits is None:
        gates = net.gates()
        if surrogate_temperature is not None:
            soft = net.gates(surrogate_temperature)
            gates = {k: _straight_through(soft[k], g) for k, g in gates.items()}
        return weights, {name: gate.sum() for name, gate in gates.items()}
    segment, *_ = _layout(net, WidthRounding(), logits.device)
    widths = _group_sums(net, torch.sigmoid(logits / net.temperature), segment)
    if surrogate_temperature is not None:
        widths = _straight_through(_group_sums(net, torch.sigmoid(logits / surrogate_temperature), segment), widths)
    return weights, WidthVector(tuple(net.masks), widths)


@ESTIMATORS.named("discrete")
def discrete_point(net, rounding: WidthRounding = WidthRounding(), surrogate_temperature=None):
    """Op weights and widths of the architecture a derivation would give now (the space's
    `select` of its op logits; the channels each mask keeps, rounded to a width as the
    discretizer rounds them: `min_channels`, `round_to`, the group's own step), with
    straight-through gradients of the soft relaxation (at `surrogate_temperature`; `None`: the
    search's temperature).

    The soft expectation can meet a target with diffuse op weights (a mixture of an expensive op
    and `zero`) whose derived network is far off it; penalising this point instead aims the
    penalty at the network that will actually be derived and pushes on its masks too.
    """
    soft = net.op_weights(surrogate_temperature)
    hard = net.select(net.op_logits())
    weights = {k: _straight_through(w, hard[k]) for k, w in soft.items()}
    logits = _flat_logits(net)
    if logits is None:
        gates = net.gates(surrogate_temperature)
        return weights, {name: _straight_through(gates[name].sum(), rounding(
            mask.kept().sum(), mask.channels, net.channel_step(name), net.channel_unit(name)))
            for name, mask in net.masks.items()}
    segment, sizes, divisors, minimums = _layout(net, rounding, logits.device)
    gates = torch.sigmoid(logits / _temperature(net, surrogate_temperature))
    kept = _group_sums(net, (logits.detach() >= KEEP_LOGIT).to(gates.dtype), segment)
    widths = _straight_through(_group_sums(net, gates, segment), rounding.rounded(kept, sizes, divisors, minimums))
    return weights, WidthVector(tuple(net.masks), widths)


def expected_cost(net, rounding: WidthRounding | None = None, surrogate_temperature=None) -> Cost:
    """MACs and params at `expected_point` (their expectation; differentiable)."""
    return net.cost(*expected_point(net, rounding, surrogate_temperature))


def discrete_cost(net, rounding: WidthRounding = WidthRounding(), surrogate_temperature=None) -> Cost:
    """MACs and params of the network a derivation would give now, with the straight-through
    gradients of `discrete_point`."""
    return net.cost(*discrete_point(net, rounding, surrogate_temperature))


def _exact(cost: Cost) -> Cost:
    return Cost(round(float(cost.macs)), round(float(cost.params)))


def dense_cost(net) -> Cost:
    """The widest single path: every group at full width, every choice its most expensive op.
    This is the 'dense' reference that fractional targets and speed-up figures refer to."""
    widths = net.full_widths()
    return _exact(net.cost(net.single_path_weights(widths, largest=True), widths))


def smallest_cost(net, min_channels: int = 1) -> Cost:
    """The cheapest reachable network: every group at `min_channels`, every choice its cheapest op."""
    widths = net.smallest_widths(min_channels)
    return _exact(net.cost(net.single_path_weights(widths, largest=False), widths))
