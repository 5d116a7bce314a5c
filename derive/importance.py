"""One-shot structured pruning of a `model`-space network by an importance score, every group
pruned by the same fraction (the uniform allocation of Wanda-sp, FLAP-UL and Torch-Pruning's
default): the retraining-free baselines the search is compared with where Torch-Pruning's own
pruners cannot run (its index mapping does not finish on grouped-query attention).

A channel's score is the sum, over every weight its group holds (the rows it writes and the
columns it reads, in every layer of the group: a head's q, k and v rows and its output
projection's columns), of a per-weight score:
- `magnitude`: w^2 (the group's L2 norm, Torch-Pruning's GroupMagnitudeImportance(p=2));
- `taylor`: |w * dL/dw| on calibration batches (first-order Taylor, GroupTaylorImportance);
- `wanda`: |w| * ||x_j||, x_j the layer's input column j over calibration tokens (Wanda, Sun et
  al. 2023; summed over a structure as Wanda-sp does).
Kept here rather than taken from a library: Torch-Pruning's importances need its groups, which
it cannot build for these networks, and Wanda/FLAP ship as scripts for LLaMA checkpoints only.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

SCORES = ("magnitude", "taylor", "wanda")


def group_scores(net, per_weight: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each prunable group's channel scores: `per_weight[layer]` (shaped as the layer's weight
    [out, in]) summed over the rows and columns each channel holds."""
    scores = {key: torch.zeros(size, dtype=torch.float64) for key, size in net.groups.sizes.items()
              if key in net.masks}
    for spaces, dim in ((net.groups.outputs, 1), (net.groups.inputs, 0)):
        for layer, space in spaces.items():
            if layer not in per_weight:
                continue
            # a row's (dim=1) or column's (dim=0) summed score
            line = per_weight[layer].double().sum(dim)
            for s in space.slices:
                if s.group in scores:
                    scores[s.group] += line[s.index.to(line.device)].view(-1, s.repeat).sum(1).cpu()
    return scores


def _linears(net) -> dict[str, nn.Module]:
    names = {*net.groups.outputs, *net.groups.inputs}
    return {n: m for n, m in net.model.named_modules() if n in names and isinstance(m, nn.Linear)}


def per_weight_scores(net, score: str, batches: Iterable, loss_fn: Callable) -> dict[str, torch.Tensor]:
    """`score` for every weight of the linear layers the groups reach (`batches`: calibration
    (x, y) pairs, for taylor and wanda)."""
    if score not in SCORES:
        raise ValueError(f"importance score must be one of {', '.join(SCORES)}, got {score!r}")
    linears = _linears(net)
    if score == "magnitude":
        return {n: m.weight.detach().pow(2) for n, m in linears.items()}
    model = net.model
    was_training = model.training
    model.eval()
    norms = {n: 0.0 for n in linears}
    hooks = []
    if score == "wanda":
        def record(name):
            def hook(m, args):
                norms[name] = norms[name] + args[0].detach().flatten(0, -2).double().pow(2).sum(0)
            return hook
        hooks = [m.register_forward_pre_hook(record(n)) for n, m in linears.items()]
    try:
        model.zero_grad(set_to_none=True)
        for x, y in batches:
            if score == "taylor":
                loss_fn(model(x), y).backward()
            else:
                with torch.no_grad():
                    model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if score == "taylor":
        out = {n: (m.weight.detach() * m.weight.grad).abs() for n, m in linears.items()}
        model.zero_grad(set_to_none=True)
        return out
    return {n: m.weight.detach().abs() * norms[n].sqrt().to(m.weight.dtype) for n, m in linears.items()}


def uniform_keep(net, scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """The top `fraction` of every group's channels by score (at least one step of each)."""
    keep = {}
    for key, s in scores.items():
        size = len(s)
        count = min(size, max(net.channel_step(key), round(size * fraction)))
        keep[key] = torch.sort(torch.topk(s, count).indices).values
    return keep


def prune_to_params(net, scores: dict[str, torch.Tensor], params: float, iterations: int = 40):
    """Slim `net` (every block kept) with each group kept at the same fraction, the largest
    fraction whose parameter count is at most `params`; returns (model, architecture)."""
    ops = {b: "keep" for b in net.blocks}

    def arch_at(fraction):
        keep = uniform_keep(net, scores, fraction)
        return net.architecture(ops, {k: len(v) for k, v in keep.items()}), keep

    smallest = arch_at(0.0)[0].params
    if smallest > params:
        raise ValueError(f"a parameter target of {params:,.0f} is below the {smallest:,.0f} "
                         f"parameters of every group at its smallest width")
    low, high = 0.0, 1.0
    for _ in range(iterations):
        mid = (low + high) / 2
        if arch_at(mid)[0].params <= params:
            low = mid
        else:
            high = mid
    arch, keep = arch_at(low)
    return net.slim(arch, keep), arch
