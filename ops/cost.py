"""Exact multiply-add and parameter counts of the layers the ops are made of.

Convention (identical to fvcore's default `FlopCountAnalysis` handles, and to its convolution
count for the string-padded convolutions it has no handle for, `export/flops.py`, so analytic
counts and fvcore's agree to the unit): one multiply-add is one FLOP for convolutions and
linear layers (bias adds are free); BatchNorm in eval mode costs 2 per output element; adaptive
average pooling costs 1 per input element; ReLU, max/avg pooling, additions and mask products are free.

Channel counts may be floats or tensors: the supernet passes *expected* channel counts so that
every formula is differentiable with respect to the mask gates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Number = Any  # int, float or a 0-d tensor


@dataclass(frozen=True)
class Cost:
    macs: Number = 0
    params: Number = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.macs + other.macs, self.params + other.params)

    def __mul__(self, scale: Number) -> "Cost":
        return Cost(self.macs * scale, self.params * scale)

    __rmul__ = __mul__


def out_size(size: int, stride: int) -> int:
    """Spatial size after a 'same'-padded kernel with this stride: ceil(size / stride)."""
    return (size - 1) // stride + 1


def conv(c_in: Number, c_out: Number, kernel: int, h_out: int, w_out: int) -> Cost:
    weights = kernel * kernel * c_in * c_out
    return Cost(weights * h_out * w_out, weights)


def depthwise_conv(channels: Number, kernel: int, h_out: int, w_out: int) -> Cost:
    weights = kernel * kernel * channels
    return Cost(weights * h_out * w_out, weights)


def batchnorm(channels: Number, h: int, w: int) -> Cost:
    return Cost(2 * channels * h * w, 2 * channels)


def linear(c_in: Number, c_out: Number) -> Cost:
    return Cost(c_in * c_out, c_in * c_out + c_out)


def global_avg_pool(channels: Number, h: int, w: int) -> Cost:
    return Cost(channels * h * w, 0)
