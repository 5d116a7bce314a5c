"""What ranks exchange: DistributedDataParallel for the weights, explicit averages for what DDP's
hooks do not see (the architecture step's gradients, the second-order step's virtual weight
step), sums of counts for metrics, and buffers made equal on every rank. Each is the identity in
a world of one."""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from maskednas.parallel.world import size, started


def sum_(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over ranks, in place (and returned): counts, correct answers, loss sums."""
    if started():
        dist.all_reduce(t)
    return t


def host_totals(sums: torch.Tensor, counts: Sequence[int]) -> tuple[list[float], list[int]]:
    """Sums kept on the device and counts kept on the host, totalled over ranks and read on the
    host: one collective and one host sync (metrics over the whole data, not one shard)."""
    if not started():
        return sums.tolist(), list(counts)
    total = sum_(torch.cat([sums.double(), sums.new_tensor(counts, dtype=torch.float64)]))
    values = total.tolist()
    return values[:len(sums)], [round(c) for c in values[len(sums):]]


def average_(tensors: Iterable[torch.Tensor]) -> None:
    """Each tensor replaced by its mean over ranks, in one collective: the tensors travel as one
    flat buffer (gloo has no AVG, so: sum, then divide)."""
    tensors = list(tensors)
    if not started() or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= size()
    for t, mean in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(mean.view_as(t))


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    average_(p.grad for p in params if p.grad is not None)


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BN running statistics) on every rank: each rank's own batches moved
    them apart, and checkpoints, derivation and evaluation must see one network."""
    if started():
        for b in module.buffers():
            dist.broadcast(b, src=0)


def average_batchnorm_statistics(module: nn.Module) -> None:
    """BN running means and variances averaged over ranks, after each rank estimated them on its
    shard (the mean of the shards' means is the global batch mean; the variance misses the
    spread between shards' means, which is small for shards of one shuffled batch)."""
    average_(t for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             for t in (m.running_mean, m.running_var) if t is not None)


def data_parallel(module: nn.Module, ignore: Iterable[nn.Parameter] = ()) -> nn.Module:
    """`module` in DistributedDataParallel when ranks run together (else `module` itself), for
    the forward passes whose backward should average the gradients of its parameters. Parameters
    in `ignore` (the supernet's alpha and mask logits, averaged by the architecture step itself)
    are left out of DDP's buckets."""
    if not started():
        return module
    ids = {id(p) for p in ignore}
    # DDP reads this attribute for the names it must neither broadcast nor reduce (the same
    # that DistributedDataParallel._set_params_and_buffers_to_ignore_for_model sets)
    module._ddp_params_and_buffers_to_ignore = [n for n, p in module.named_parameters()
                                                if id(p) in ids]
    # a conv over one input channel (digits' stem) in channels_last has strides that match
    # either layout; DDP then copies its small gradient once and warns: not worth the noise
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    device = next(module.parameters()).device
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """BatchNorm layers that normalise with the statistics of the global batch, in place (GPU
    only when ranks run together: torch's SyncBatchNorm has no CPU kernel; in a world of one it
    is plain BatchNorm). Undone by `plain_batchnorm` before derivation."""
    return _swap(module, nn.BatchNorm2d, lambda bn: nn.SyncBatchNorm(
        bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats))


def plain_batchnorm(module: nn.Module) -> nn.Module:
    """SyncBatchNorm layers back to BatchNorm2d, in place: slimming and export read plain layers."""
    return _swap(module, nn.SyncBatchNorm, lambda bn: nn.BatchNorm2d(
        bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats))


def _swap(module: nn.Module, old: type, make) -> nn.Module:
    """Every `old` layer under `module` replaced by `make(layer)` with the same parameters,
    statistics, mode and tags (the project's `channel_roles`, which torch's
    convert_sync_batchnorm would drop)."""
    if isinstance(module, old):
        new = make(module)
        new.load_state_dict(module.state_dict())
        new.to(next(module.buffers(), torch.empty(0)).device).train(module.training)
        new.requires_grad_(any(p.requires_grad for p in module.parameters()))
        standard = {*vars(make(module)), *vars(type(module)(module.num_features))}
        new.__dict__.update({k: v for k, v in vars(module).items() if k not in standard})
        return new
    for name, child in module.named_children():
        setattr(module, name, _swap(child, old, make))
    return module
