"""Baselines at equal MACs, built from the same machinery as the search.

A backbone is the macro supernet whose only candidate is one op (e.g. conv_3x3): its masks
are the prunable channel groups, so uniform width scaling and L1-norm filter pruning (Li et al.,
2017) are channel selections handed to the same slimmer, and a random architecture is random op
and mask logits handed to the same discretizer. Torch-Pruning's magnitude pruner (optional
`bench` extra) works on the trained compact model itself.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from maskednas.derive.discretize import Derivation, derive
from maskednas.derive.slim import copy_selected


def _ratio_for_target(macs_at, target: float, iterations: int = 40) -> float:
    """Keep ratio r in (0, 1] whose network's MACs are closest to the target, from either side
    (MACs grow with r; a baseline held strictly below the target would be handicapped)."""
    lo, hi = 0.0, 1.0
    if macs_at(hi) <= target:
        return hi
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if macs_at(mid) <= target else (lo, mid)
    return min((lo, hi), key=lambda r: abs(macs_at(r) - target)) if lo > 0 else hi


def _scaled_counts(net, groups, ratio: float) -> dict[str, int]:
    return {g: max(1, math.ceil(ratio * net.masks[g].channels)) for g in groups}


def uniformly_scaled_counts(net, target_macs: float) -> tuple[dict[str, str], dict[str, int]]:
    """The chosen ops, and every group's width scaled by the one factor closest to the target."""
    ops = net.derive_ops()
    groups = net.used_groups(ops)
    ratio = _ratio_for_target(
        lambda r: net.architecture(ops, _scaled_counts(net, groups, r)).cost().macs, target_macs)
    return ops, _scaled_counts(net, groups, ratio)


def uniform_width(net, target_macs: float) -> Derivation:
    """Every channel group scaled by one factor, chosen so the network is closest to the target."""
    ops, counts = uniformly_scaled_counts(net, target_macs)
    keep = {g: torch.arange(n) for g, n in counts.items()}
    return Derivation(net.architecture(ops, counts), ops, keep)


@torch.no_grad()
def filter_l1_scores(net, ops: dict[str, str]) -> dict[str, torch.Tensor]:
    """Per channel of each group: the summed L1 norm of the filters that write it."""
    scores = {g: torch.zeros(net.masks[g].channels) for g in net.used_groups(ops)}
    scores["stem"] += net.stem[0].weight.abs().sum((1, 2, 3)).cpu()
    for layer in net.layers:
        name = ops[layer.name]
        groups = {"out": layer.out_group,
                  "hidden": layer.hidden_groups[layer.names.index(name)]}
        for m in layer.mixed.candidates[name].modules():
            if isinstance(m, nn.Conv2d) and m.groups == 1 and m.channel_roles[1] in groups:
                scores[groups[m.channel_roles[1]]] += m.weight.abs().sum((1, 2, 3)).cpu()
    return scores


def l1_filter_pruning(net, target_macs: float) -> Derivation:
    """Li et al. (2017): the same fraction of every layer's filters, smallest L1 norms first.
    `net` must hold the trained dense weights (see `load_dense_weights`)."""
    ops, counts = uniformly_scaled_counts(net, target_macs)
    scores = filter_l1_scores(net, ops)
    keep = {g: torch.sort(torch.topk(scores[g], n).indices).values for g, n in counts.items()}
    return Derivation(net.architecture(ops, counts), ops, keep)


def random_architecture(net, target_macs: float, generator: torch.Generator) -> Derivation:
    """Ops drawn uniformly per layer and channels ranked at random, cut to the target by the
    discretizer (this overwrites `net`'s alpha and mask logits). Drawing many and keeping the
    best is random search; mutating is evolution."""
    with torch.no_grad():
        for p in net.arch_parameters():
            p.copy_(torch.rand(p.shape, generator=generator))
    return derive(net, target_macs)


@torch.no_grad()
def load_dense_weights(net, compact: nn.Module, ops: dict[str, str]) -> None:
    """Copy a trained full-width compact model back into the supernet's chosen ops."""
    copy_selected(compact.stem, net.stem, {})
    for layer, trained in zip(net.layers, compact.layers):
        if hasattr(trained, "op"):
            copy_selected(trained.op, layer.mixed.candidates[ops[layer.name]], {})
    copy_selected(compact.head, net.head, {})


def torch_pruning_magnitude(model: nn.Module, example: torch.Tensor, target_macs: float,
                            steps: int = 200) -> nn.Module:
    """Torch-Pruning's magnitude pruner with global ranking (see `torch_pruning_to_target`)."""
    import torch_pruning as tp
    return torch_pruning_to_target(model, example, target_macs,
                                   tp.importance.MagnitudeImportance(p=1), True, steps)


def torch_pruning_to_target(model: nn.Module, example: torch.Tensor, target_macs: float,
                            importance, global_pruning: bool, steps: int = 200,
                            before_step=None) -> nn.Module:
    """A Torch-Pruning pruner with `importance` (global ranking, or the same ratio in every
    layer), stepped until the model's MACs (counted by fvcore) reach the target; fine steps
    (~0.5% of channels) land it close below. The classifier's outputs are kept. Prunes `model`
    in place and returns it. `before_step(model)` runs before each step (a gradient-based
    importance such as Taylor's reads the gradients it leaves). timm's attention is pruned as
    Torch-Pruning's own ViT example does: its head dimensions, every head alike."""
    import torch_pruning as tp

    from maskednas.export.flops import fvcore_report
    from maskednas.supernet.channel_groups import supported_types
    from maskednas.supernet.model_trace import trace

    classifiers = [model.get_submodule(n) for n in trace(model, example, supported_types()).output_layers]
    num_heads, told = _timm_attention_heads(model)
    pruner = tp.pruner.MetaPruner(model, example, importance=importance,
                                  global_pruning=global_pruning, pruning_ratio=0.95,
                                  iterative_steps=steps, ignored_layers=classifiers,
                                  num_heads=num_heads)
    for _ in range(steps):
        if fvcore_report(model, example)[0] <= target_macs:
            break
        if before_step is not None:
            before_step(model)
        pruner.step()
        told(pruner)
    return model


def _timm_attention_heads(model: nn.Module):
    """Each timm Attention's qkv layer -> its head count (what Torch-Pruning's pruner needs to
    prune within heads), and a function that tells every Attention its widths after a step."""
    from timm.models.vision_transformer import Attention
    attentions = [m for m in model.modules() if isinstance(m, Attention)]

    def told(pruner) -> None:
        for m in attentions:
            m.num_heads = pruner.num_heads[m.qkv]
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
            m.attn_dim = m.num_heads * m.head_dim
    return {m.qkv: m.num_heads for m in attentions}, told


def torch_pruning_to_measurement(dense: nn.Module, example: torch.Tensor, goal: float,
                                 measured_fraction, importance, global_pruning: bool,
                                 corrections: int = 6, before_step=None):
    """A Torch-Pruning pruner tuned to a measured figure rather than MACs: `dense` (left as it
    is) pruned to a MACs target, re-aimed as latency derivations are (latency/aim.py) until
    `measured_fraction(pruned)` (e.g. its latency over the dense network's, timed alongside)
    is within tolerance of `goal`. Returns the `Aimed` record: the pruned model closest to the
    goal as `.derivation`, every MACs aim tried and what it measured as `.tries`."""
    import copy

    from maskednas.export.flops import fvcore_report
    from maskednas.latency.aim import aim_by_measurement

    dense_macs = fvcore_report(dense, example)[0]

    def prune_to(macs: float) -> nn.Module:
        return torch_pruning_to_target(copy.deepcopy(dense).eval(), example, macs, importance,
                                       global_pruning, before_step=before_step)
    return aim_by_measurement(prune_to, measured_fraction, goal * dense_macs, dense_macs, corrections)
