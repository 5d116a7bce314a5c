"""Physical slimming: copy the kept weights of a hard-masked supernet into a compact model.

The compact model comes from `build(arch)`, so it has the same module structure as the chosen
ops, only narrower. Each conv, norm and linear is tagged with the channel groups it reads and
writes (`channel_roles`); one small copy function per layer type selects the kept indices
(Torch-Pruning style), and the result is a real smaller network, not zeroed weights.
"""
from __future__ import annotations

import torch
from torch import nn

from maskednas.derive.discretize import Derivation
from maskednas.export.compact import build
from maskednas.supernet.base import Index  # kept indices; None keeps every channel (image in, classes out)


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


def slim(net, derivation: Derivation) -> nn.Module:
    """The compact model of `derivation`, holding the supernet's kept weights: the space says
    which of its modules feed which compact module with which channels (`net.copy_plan`), unless
    it slims its own way (`net.slim`)."""
    own = net.slim(derivation.arch, derivation.keep)
    if own is not None:
        return own
    model = build(derivation.arch).to(next(net.parameters()).device)
    for src, dst, index in net.copy_plan(model, derivation.arch, derivation.keep):
        copy_selected(src, dst, index)
    return model
