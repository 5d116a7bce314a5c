"""Latency parts of a user's network: each conv, linear and norm layer on its own, at its traced
input shape, rebuilt at any input and output width (its first channels kept).

A part's table axes are the layer's own input and output channel counts (one for a layer whose
input and output channels are one count: norms, depthwise and grouped convolutions), not channel groups:
a layer may read several groups (a concatenation) or part of one, and the space turns group widths
into these counts with one linear map (`UserModel.latency_axes`). Layers of the same type, shape
and settings are one table entry, measured once (a ResNet-50 has 53 convs, 22 different ones).

Layers of other types (a user's own rule, Conv1d/Conv3d, which have no rule) are not timed
alone: the table's calibration on whole networks (latency/calibrate.py) spreads their time, and
whatever the runtime adds or fuses (activations, residual adds, pooling), over the parts.
"""
from __future__ import annotations

import copy
import hashlib
import json

import torch
from torch import nn

from maskednas.latency.parts import LatencyPart

def timed_alone(module: nn.Module) -> bool:
    """Whether `resized_layer` can rebuild this layer at other widths."""
    if isinstance(module, nn.GroupNorm):
        return True
    if isinstance(module, nn.LayerNorm):
        return len(module.normalized_shape) == 1
    return isinstance(module, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm))


def _take(module: nn.Module, name: str, dim: int, count: int) -> None:
    tensor = getattr(module, name, None)
    if tensor is None:
        return
    sliced = tensor.detach().narrow(dim, 0, count).clone()
    if isinstance(tensor, nn.Parameter):
        setattr(module, name, nn.Parameter(sliced, requires_grad=False))
    else:
        setattr(module, name, sliced)


def resized_layer(module: nn.Module, c_in: int, c_out: int) -> nn.Module:
    """A copy of `module` reading `c_in` and writing `c_out` channels (its first ones). A grouped
    convolution keeps whole groups (the nearest count to `c_out`), a depthwise one and a norm
    take `c_out` for both, a GroupNorm a multiple of its group count."""
    m = copy.deepcopy(module)
    if isinstance(m, nn.modules.conv._ConvNd):
        if m.groups > 1 and m.groups == m.in_channels == m.out_channels:  # depthwise
            c_in = c_out = groups = c_out
        elif m.groups > 1:
            per_out, per_in = m.out_channels // m.groups, m.in_channels // m.groups
            groups = max(1, min(m.groups, round(c_out / per_out)))
            c_in, c_out = groups * per_in, groups * per_out
        else:
            groups = 1
        _take(m, "weight", 0, c_out)
        if groups == 1:
            _take(m, "weight", 1, c_in)
        for name, tensor in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            if name != "weight" and tensor.dim() >= 1 and tensor.shape[0] == module.out_channels:
                _take(m, name, 0, c_out)  # bias, a weight-standardised conv's gain
        m.in_channels, m.out_channels, m.groups = c_in, c_out, groups
    elif isinstance(m, nn.Linear):
        _take(m, "weight", 0, c_out)
        _take(m, "weight", 1, c_in)
        _take(m, "bias", 0, c_out)
        m.in_features, m.out_features = c_in, c_out
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        for name in ("weight", "bias", "running_mean", "running_var"):
            _take(m, name, 0, c_out)
        m.num_features = c_out
    elif isinstance(m, nn.LayerNorm):
        for name in ("weight", "bias"):
            _take(m, name, 0, c_out)
        m.normalized_shape = (c_out,)
    elif isinstance(m, nn.GroupNorm):
        c_out = max(1, round(c_out / m.num_groups)) * m.num_groups
        for name in ("weight", "bias"):
            _take(m, name, 0, c_out)
        m.num_channels = c_out
    else:
        raise TypeError(f"{type(module).__name__} cannot be rebuilt at other widths")
    return m


def _input_width(layer: nn.Module) -> int:
    for name in ("in_channels", "in_features", "num_features", "num_channels"):
        if hasattr(layer, name):
            return int(getattr(layer, name))
    return int(layer.normalized_shape[0])


def channel_dim(module: nn.Module, shape_in: tuple[int, ...], c_in: int) -> int:
    """The dimension of the layer's input its channels are: the last for a linear layer and a
    LayerNorm over the last dimension, the second otherwise (convs, BatchNorm, GroupNorm, a
    channels-first LayerNorm such as ConvNeXt's `LayerNorm2d`)."""
    if isinstance(module, nn.Linear) or (isinstance(module, nn.LayerNorm) and shape_in[-1] == c_in):
        return len(shape_in) - 1
    return 1


def layer_part(name: str, module: nn.Module, shape_in: tuple[int, ...], c_in: int, c_out: int,
               one_width: bool, choice: tuple[str, int] | None, locate, context: str = "") -> LatencyPart:
    """The part of layer `name` (dense widths `c_in`, `c_out`; traced input `shape_in` with its
    batch; `one_width`: its input and output channels are one count, as in norms, depthwise and
    grouped convolutions). Its key names what its time depends on, so equal layers share one
    table entry; `context` (the network's digest) goes into its signature, not its key."""
    shape = list(shape_in[1:])
    dim = channel_dim(module, shape_in, c_in) - 1

    def build(widths):
        w_in, w_out = (widths[0], widths[0]) if one_width else widths
        layer = resized_layer(module, int(w_in), int(w_out))
        return layer, tuple(shape[:dim] + [_input_width(layer)] + shape[dim + 1:])

    settings = {k: str(v) for k, v in vars(module).items()
                if not k.startswith("_") and k != "training" and isinstance(v, (int, float, str, tuple, bool))}
    described = json.dumps([type(module).__name__, shape, c_in, c_out, one_width, sorted(settings.items()),
                            [(n, tuple(p.shape)) for n, p in module.named_parameters(recurse=False)]])
    key = f"{type(module).__name__}-{hashlib.sha256(described.encode()).hexdigest()[:12]}"
    axes = (f"{name}|c",) if one_width else (f"{name}|in", f"{name}|out")
    sizes = (c_out,) if one_width else (c_in, c_out)
    return LatencyPart(key, axes, sizes, build, choice=choice, locate=locate, context=context)
