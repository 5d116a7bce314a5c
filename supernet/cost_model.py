"""Differentiable cost of a whole search space.

The cost of a layer is the expectation over its op distribution of each op's exact cost at the
expected channel counts (sum of the gates of each group). Costs are bilinear in channel counts,
so with one-hot op weights and 0/1 gates this is exactly the cost of the discrete network, the
number fvcore counts on the compact model.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ops import Cost, Head, Stem, get_op

Channels = Mapping[str, Any]  # group -> channel count (int, float or tensor)


def layer_op_costs(layer, channels: Channels) -> list[Cost]:
    """Cost of every candidate of `layer` at the given group widths."""
    size = layer.in_size
    costs = []
    for name, group in zip(layer.names, layer.hidden_groups):
        hidden = channels[group] if group else None
        costs.append(get_op(name).cost(channels[layer.in_group], channels[layer.out_group],
                                       layer.stride, size, size, hidden=hidden, tied=layer.residual))
    return costs


def network_cost(net, op_weights: Mapping[str, Any], channels: Channels) -> Cost:
    """Cost of `net` given per-layer op weights (probabilities or one-hot) and group widths."""
    total = Stem.cost(net.in_channels, channels["stem"], net.input_size, net.input_size)
    for layer in net.layers:
        for w, c in zip(op_weights[layer.name], layer_op_costs(layer, channels)):
            total = total + c * w
    return total + Head.cost(channels[net.final_group], net.num_classes, net.final_size, net.final_size)


def expected_cost(net) -> Cost:
    """Expected MACs and params under the current alpha and masks (differentiable)."""
    channels = {name: gate.sum() for name, gate in net.gates().items()}
    return network_cost(net, net.op_weights(), channels)


def _straight_through(soft: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    return hard.to(soft.dtype) + soft - soft.detach()


def discrete_cost(net) -> Cost:
    """Cost of the architecture a derivation would give now (argmax op per layer, channels with
    gate >= 1/2), with straight-through gradients of the soft relaxation.

    The soft expectation can meet a target with diffuse op weights (a mixture of an expensive op
    and `zero`) whose argmax network is far off it; penalising this value instead aims the
    penalty at the network that will actually be derived and pushes on its masks too.
    """
    weights = {name: _straight_through(w, torch.nn.functional.one_hot(w.argmax(), len(w)))
               for name, w in net.op_weights().items()}
    channels = {name: _straight_through(g, g >= 0.5).sum() for name, g in net.gates().items()}
    return network_cost(net, weights, channels)


def full_widths(net) -> dict[str, int]:
    return {name: mask.channels for name, mask in net.masks.items()}


def _single_path_cost(net, widths: Channels, pick) -> Cost:
    """Cost when every layer takes the op that `pick` (min or max by MACs) selects."""
    total = Stem.cost(net.in_channels, widths["stem"], net.input_size, net.input_size)
    for layer in net.layers:
        total = total + pick(layer_op_costs(layer, widths), key=lambda c: c.macs)
    return total + Head.cost(widths[net.final_group], net.num_classes, net.final_size, net.final_size)


def dense_cost(net) -> Cost:
    """The widest single path: every group at full width, every layer its most expensive op.
    This is the 'dense' reference that fractional targets and speed-up figures refer to."""
    return _single_path_cost(net, full_widths(net), max)


def smallest_cost(net, min_channels: int = 1) -> Cost:
    """The cheapest reachable network: every group at `min_channels`, every layer its cheapest op."""
    widths = {name: min(min_channels, c) for name, c in full_widths(net).items()}
    return _single_path_cost(net, widths, min)
