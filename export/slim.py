"""Physical slimming: copy the kept weights of a hard-masked supernet into a compact model.

The compact model comes from `build(arch)`, so it has the same module structure as the chosen
ops, only narrower. Each conv, norm and linear is tagged with the channel groups it reads and
writes (`channel_roles`); one small copy function per layer type selects the kept indices
(Torch-Pruning style), and the result is a real smaller network, not zeroed weights.
"""
from __future__ import annotations

import torch
from torch import nn

from export.build import CompactNet, build
from export.discretize import Derivation

Index = torch.Tensor | None  # kept indices; None keeps every channel (image in, classes out)


def _take(t: torch.Tensor, dim: int, idx: Index) -> torch.Tensor:
    return t if idx is None else t.index_select(dim, idx.to(t.device))


def _copy(dst: torch.Tensor, src: torch.Tensor, what: str) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"{what}: kept weights have shape {tuple(src.shape)}, "
                         f"the compact layer expects {tuple(dst.shape)}")
    dst.copy_(src)


def copy_conv(src: nn.Conv2d, dst: nn.Conv2d, idx_in: Index, idx_out: Index) -> None:
    if src.groups == 1:
        weight = _take(_take(src.weight, 0, idx_out), 1, idx_in)
    elif src.groups == src.in_channels == src.out_channels:  # depthwise: in and out are one group
        weight = _take(src.weight, 0, idx_out)
    else:
        raise NotImplementedError(f"grouped conv with groups={src.groups} cannot be slimmed")
    _copy(dst.weight, weight, "conv weight")
    if src.bias is not None:
        _copy(dst.bias, _take(src.bias, 0, idx_out), "conv bias")


def copy_norm(src: nn.BatchNorm2d, dst: nn.BatchNorm2d, idx: Index) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        _copy(getattr(dst, name), _take(getattr(src, name), 0, idx), f"norm {name}")
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


def copy_linear(src: nn.Linear, dst: nn.Linear, idx_in: Index, idx_out: Index) -> None:
    _copy(dst.weight, _take(_take(src.weight, 0, idx_out), 1, idx_in), "linear weight")
    _copy(dst.bias, _take(src.bias, 0, idx_out), "linear bias")


COPIERS = {nn.Conv2d: copy_conv, nn.BatchNorm2d: copy_norm, nn.Linear: copy_linear}


@torch.no_grad()
def copy_selected(src: nn.Module, dst: nn.Module, index: dict[str, Index]) -> None:
    """Copy every tagged layer of `src` into the same-named, narrower layer of `dst`."""
    src_modules = dict(src.named_modules())
    for name, d in dst.named_modules():
        roles = getattr(d, "channel_roles", None)
        if roles is None:
            if any(True for _ in d.parameters(recurse=False)):
                raise TypeError(f"{type(d).__name__} {name!r} has parameters but no channel_roles")
            continue
        s = src_modules.get(name)
        if type(s) is not type(d):
            raise ValueError(f"module {name!r}: supernet has {type(s).__name__}, compact model "
                             f"has {type(d).__name__}; the architecture does not match the supernet")
        COPIERS[type(d)](s, d, *(index.get(role) for role in roles))


def halves(keep: torch.Tensor, channels: int) -> dict[str, torch.Tensor]:
    """Kept indices of the two halves of a group, as FactorizedReduce's two convs write them."""
    half = channels // 2
    a, b = keep[keep < half], keep[keep >= half] - half
    if len(a) != len(b):
        raise ValueError(f"FactorizedReduce needs as many kept channels in each half of its "
                         f"output, got {len(a)} and {len(b)}")
    return {"out_a": a, "out_b": b}


def copies(keep: torch.Tensor, channels: int, n: int) -> torch.Tensor:
    """Kept indices of a concatenation of `n` tensors of one group (a cell's output)."""
    return torch.cat([keep + i * channels for i in range(n)])


def slim(net, derivation: Derivation) -> CompactNet:
    """The compact model of `derivation`, holding the supernet's kept weights."""
    keep = derivation.keep
    model = build(derivation.arch).to(next(net.parameters()).device)
    copy_selected(net.stem, model.stem, {"out": keep["stem"]})
    if derivation.arch.cells:
        return _slim_cells(net, model, derivation)
    for layer, compact, choice in zip(net.layers, model.layers, derivation.arch.layers):
        if choice.removed:
            continue
        i = layer.names.index(choice.op)
        hidden = layer.hidden_groups[i]
        copy_selected(layer.mixed.candidates[choice.op], compact.op,
                      {"in": keep[layer.in_group], "out": keep[layer.out_group],
                       "hidden": keep[hidden] if hidden else None})
    copy_selected(net.head, model.head, {"in": keep[net.final_group]})
    return model


def _slim_cells(net, model: CompactNet, derivation: Derivation) -> CompactNet:
    keep = derivation.keep

    def input_index(group: str, n: int) -> torch.Tensor:
        return copies(keep[group], net.masks[group].channels, n)

    for cell, compact, choice in zip(net.cells, model.cells, derivation.arch.cells):
        g = cell.group
        out = {"out": keep[g], "hidden": keep[g], **halves(keep[g], cell.channels)}
        for k, (pre, compact_pre) in enumerate(((cell.preprocess0, compact.preprocess0),
                                                (cell.preprocess1, compact.preprocess1))):
            copy_selected(pre, compact_pre, {"in": input_index(*cell.in_groups[k]), **out})
        for i, (edge, compact_edge) in enumerate(zip(choice.edges, compact.edges)):
            mixed = cell.edges[net.edge_index(i // 2, edge.source)]
            copy_selected(mixed.candidates[edge.op], compact_edge, {"in": keep[g], **out})
    last = net.cells[-1]
    copy_selected(net.head, model.head, {"in": input_index(last.group, net.multiplier)})
    return model
