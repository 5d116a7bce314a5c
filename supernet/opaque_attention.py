"""Attentions that Torch-Pruning's graph sees as one layer.

Torch-Pruning maps a product of two activations (q @ k) as if elementwise; under grouped-query
attention, where k has fewer heads than q and is repeated (`repeat_kv`), its index mapping then
grows without end. An attention rule with `opaque=True` has its modules registered as customized
layers instead: the graph does not trace inside them, and sees an attention as a layer whose
input channels are its input projections' and whose output channels are its output
projection's (the residual stream it reads and writes). Its heads are a head group of ours
(supernet/attention_heads.py) either way.
"""
from __future__ import annotations

import torch
from torch import nn

from maskednas.ops.attention_rules import AttentionRule, attention_rule_for


def opaque_attentions(model: nn.Module) -> dict[nn.Module, AttentionRule]:
    """The modules of `model` that an opaque attention rule covers. Torch-Pruning registers
    customized layers by type, so every module of such a type must be covered."""
    found = {m: rule for m in model.modules()
             if (rule := attention_rule_for(m)) is not None and rule.opaque}
    types = {type(m) for m in found}
    stray = [n for n, m in model.named_modules() if type(m) in types and m not in found]
    if stray:
        raise ValueError(f"{stray[0]} is a {type(model.get_submodule(stray[0])).__name__} that its "
                         f"attention rule does not cover, while others of its type are covered")
    return found


def projections(attention: nn.Module, rule: AttentionRule) -> tuple[list[str], str]:
    """The names (in `attention`) of its input projections and of its output projection."""
    return list(rule.rows(attention)), rule.columns(attention)[0]


def attention_pruner():
    """A Torch-Pruning pruner for opaque attentions: input channels are the input projections'
    columns, output channels the output projection's rows (and bias)."""
    import torch_pruning as tp

    class AttentionPruner(tp.pruner.function.BasePruningFunc):
        def _linears(self, layer):
            inputs, output = projections(layer, attention_rule_for(layer))
            return [layer.get_submodule(n) for n in inputs], layer.get_submodule(output)

        def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
            _, out = self._linears(layer)
            keep = _kept(out.out_features, idxs)
            out.weight = nn.Parameter(out.weight[keep].clone(), out.weight.requires_grad)
            if out.bias is not None:
                out.bias = nn.Parameter(out.bias[keep].clone(), out.bias.requires_grad)
            out.out_features = len(keep)
            return layer

        def prune_in_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
            inputs, _ = self._linears(layer)
            for linear in inputs:
                keep = _kept(linear.in_features, idxs)
                linear.weight = nn.Parameter(linear.weight[:, keep].clone(), linear.weight.requires_grad)
                linear.in_features = len(keep)
            return layer

        def get_out_channels(self, layer: nn.Module) -> int:
            return self._linears(layer)[1].out_features

        def get_in_channels(self, layer: nn.Module) -> int:
            return self._linears(layer)[0][0].in_features

    return AttentionPruner()


def _kept(size: int, pruned: list[int]) -> torch.Tensor:
    drop = set(int(i) for i in pruned)
    return torch.tensor([i for i in range(size) if i not in drop], dtype=torch.long)
