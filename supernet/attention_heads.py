"""Attention heads as channel groups of a user's network.

Each attention module an attention rule covers (ops/attention_rules) gets one group whose
members are its heads: the rows of its input projections and the columns of its output
projection that belong to a head are one member. Gating and cost reuse the channel-space
machinery unchanged: the output projection reads the group through a `Slice` whose `repeat` is
the head's column count (its gate multiplies those columns), and each input projection writes it
through a `Slice` over its rows. Slimming cuts those rows and columns and tells the module its
new head count; Torch-Pruning never sees these groups (its graph loses channels at q @ k).
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from maskednas.ops.attention_rules import AttentionRule, attention_rule_for
from maskednas.supernet.channel_groups import (ChannelGroups, ChannelSpace, Slice, dependency_graph,
                                               group_key, leave_whole)
from maskednas.supernet.model_trace import within


@dataclass
class HeadGroup:
    attention: str  # the attention module
    key: str  # its group
    rule: AttentionRule
    rows: dict[str, torch.Tensor]  # input projection -> its rows of each head [heads, rows]
    reader: str  # the output projection
    columns: torch.Tensor  # its input columns of each head [heads, columns]

    @property
    def size(self) -> int:
        return len(self.columns)

    @property
    def unit(self) -> int:
        """Channels of the output projection's input per head."""
        return self.columns.shape[1]


def add_head_groups(model: nn.Module, groups: ChannelGroups, ignored: set[str]) -> dict[str, HeadGroup]:
    """A head group per covered attention module of `model`, added to `groups` (key -> group).
    An attention whose projections another group already prunes, or one in `ignored`, is left
    whole (recorded in `groups.skipped`)."""
    found = {}
    for name, m in model.named_modules():
        rule = attention_rule_for(m)
        if rule is None or rule.heads(m) < 2:
            continue
        rows = {f"{name}.{child}": r for child, r in rule.rows(m).items()}
        child, columns = rule.columns(m)
        reader = f"{name}.{child}"
        why = rule.unsupported(m) or next(
            (f"{layer} is listed in model.ignore" for layer in [name, *rows, reader] if layer in ignored), None)
        taken = [layer for layer in rows if layer in groups.outputs] + (
            [reader] if reader in groups.inputs else [])
        if why is None and taken:
            why = f"another channel group prunes {taken[0]}"
        if why is not None:
            groups.skipped[name] = f"its heads are left whole: {why}"
            continue
        for layer in rows:  # Torch-Pruning's group of the projection, left whole at q @ k
            groups.skipped.pop(layer, None)
        key = f"{group_key(name)}:heads"  # ':' is in no module name
        groups.sizes[key] = len(columns)
        groups.roots[key] = (f"{name} (heads)", None)
        groups.members[key] = {*rows, reader}
        for layer, r in rows.items():
            groups.outputs[layer] = ChannelSpace(model.get_submodule(layer).out_features,
                                                 [Slice(key, r.flatten(), r.shape[1])])
        groups.inputs[reader] = ChannelSpace(model.get_submodule(reader).in_features,
                                             [Slice(key, columns.flatten(), columns.shape[1])])
        groups.importance[key] = _magnitude(model, rows, reader, columns)
        found[key] = HeadGroup(name, key, rule, rows, reader, columns)
    return found


def leave_embedding_whole(groups: ChannelGroups, heads: dict[str, HeadGroup]) -> None:
    """Leave whole the groups the covered attentions' output projections write: the residual
    stream, whose width is the embedding width (`model.embedding_width=false`)."""
    streams = {s.group for h in heads.values() if h.reader in groups.outputs
               for s in groups.outputs[h.reader].slices}
    for group in streams:
        leave_whole(groups, group, "model.embedding_width=false: the embedding width (what the "
                                   "attention's output projection writes) is kept")


@torch.no_grad()
def _magnitude(model: nn.Module, rows: dict[str, torch.Tensor], reader: str,
               columns: torch.Tensor) -> torch.Tensor:
    """Each head's L2 norm over its rows and columns, divided by the mean (Torch-Pruning's group
    magnitude importance, per head)."""
    heads = len(columns)
    squares = torch.zeros(heads)
    for layer, r in rows.items():
        w = model.get_submodule(layer).weight.detach().float().cpu()
        squares += w[r.flatten()].pow(2).sum(1).view(heads, -1).sum(1)
    w = model.get_submodule(reader).weight.detach().float().cpu()
    squares += w[:, columns.flatten()].pow(2).sum(0).view(heads, -1).sum(1)
    norm = squares.sqrt()
    return norm / norm.mean().clamp_min(1e-12)


@torch.no_grad()
def slim_heads(model: nn.Module, head: HeadGroup, kept: torch.Tensor) -> None:
    """Keep the heads `kept` (ascending indices) of `head`'s attention in `model`."""
    kept = kept.cpu()
    for layer, r in head.rows.items():
        linear = model.get_submodule(layer)
        index = torch.sort(r[kept].flatten()).values
        linear.weight = nn.Parameter(linear.weight[index].clone(), linear.weight.requires_grad)
        if linear.bias is not None:
            linear.bias = nn.Parameter(linear.bias[index].clone(), linear.bias.requires_grad)
        linear.out_features = len(index)
    linear = model.get_submodule(head.reader)
    index = torch.sort(head.columns[kept].flatten()).values
    linear.weight = nn.Parameter(linear.weight[:, index].clone(), linear.weight.requires_grad)
    linear.in_features = len(index)
    head.rule.resize(model.get_submodule(head.attention), len(kept))


def leave_whole_what_breaks_other_attention(model: nn.Module, example: torch.Tensor,
                                            groups: ChannelGroups, heads: dict[str, HeadGroup],
                                            product_modules: set[str]) -> None:
    """An attention no rule covers often sizes its heads from its input's width (`C //
    num_heads`): pruning the channels it reads then breaks its reshape. Each group read inside
    a module whose forward multiplies two activations (outside the covered attentions) is tried:
    a copy pruned by one of its channels must still run, or the group is left whole."""
    covered = [h.attention for h in heads.values()]
    uncovered = sorted((p for p in product_modules if not any(within(p, c) for c in covered)),
                       key=lambda p: (-len(p), p))  # the innermost first
    for key in [k for k in groups.sizes if k not in heads]:
        members = groups.members.get(key, ())
        module = next((p for p in uncovered if any(within(m, p) for m in members)), None)
        if module is None:
            continue
        copy_ = copy.deepcopy(model).eval()
        try:
            with warnings.catch_warnings(), dependency_graph(copy_, example) as dg:
                warnings.simplefilter("ignore")
                for root, handler, channels in groups.root_channels(key, [0]):
                    layer = copy_.get_submodule(root)
                    dg.get_pruning_group(layer, getattr(dg.get_pruner_of_module(layer), handler.__name__),
                                         channels).prune()
            with torch.no_grad():
                copy_(example)
        except (RuntimeError, ValueError, IndexError) as e:
            where = module or "the network's forward"
            leave_whole(groups, key, f"{where} multiplies two activations (an attention no attention "
                                     f"rule covers) and fails with these channels pruned "
                                     f"({str(e).splitlines()[0][:120]})")
