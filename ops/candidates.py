"""Candidate operations of the search spaces, and their exact costs.

Every op is built from (c_in, c_out, stride) plus two optional structure arguments:
  hidden: width of the op's inner channel group (sep conv middle, inverted-residual expansion);
          `None` takes the op's default. Ops with an inner group accept a gate for it in forward.
  tied:   whether input and output are the same channel group (a residual stream at stride 1).
          Identity and pooling need it; untied they add a 1x1 projection so channels can change.
          It defaults to `c_in == c_out and stride == 1` but search spaces pass it explicitly: a
          pruned compact model must keep the structure of the supernet even when kept widths
          happen to coincide.

Convs and norms carry `channel_roles` ("in", "hidden", "out" for their input and output
channels) so that `export.slim` copies kept weights for every op with one generic function.
Ops follow DARTS' ReLU-Conv-BN order; inverted residuals follow MobileNetV2.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch
from torch import nn

from maskednas.ops import cost as C
from maskednas.ops.masks import apply_gate
from maskednas.common import Registry

OPS = Registry("op")


def tag(module: nn.Module, *roles: str) -> nn.Module:
    """Mark which channel groups a conv/norm/linear reads and writes (one role for norms)."""
    module.channel_roles = roles
    return module


def conv(c_in: int, c_out: int, kernel: int, stride: int = 1, dilation: int = 1,
         groups: int = 1, roles: tuple[str, str] = ("in", "out")) -> nn.Conv2d:
    padding = dilation * (kernel - 1) // 2
    return tag(nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation, groups, bias=False), *roles)


def norm(channels: int, role: str) -> nn.BatchNorm2d:
    return tag(nn.BatchNorm2d(channels), role)


class SharedInput:
    """One tensor that several ops read, with the work they would all repeat on it: ReLU(x), and
    the outputs of parameter-free ops (pooling, identity), which are the same for every reader."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self._relu: torch.Tensor | None = None
        self._outputs: dict[Any, torch.Tensor] = {}

    @property
    def relu(self) -> torch.Tensor:
        if self._relu is None:
            self._relu = torch.relu(self.x)
        return self._relu

    def shared_output(self, key: Any, op: nn.Module) -> torch.Tensor:
        """op(x) for a parameter-free op, computed by the first caller with this key."""
        if key not in self._outputs:
            self._outputs[key] = op(self.x)
        return self._outputs[key]


def run_after_shared_relu(module: nn.Module, inp: SharedInput) -> torch.Tensor:
    """module(inp.x), taking the leading ReLU of `module` (if it has one) from `inp`."""
    if isinstance(module, nn.Sequential) and len(module) and isinstance(module[0], nn.ReLU):
        x = inp.relu
        for layer in islice(module, 1, None):
            x = layer(x)
        return x
    if isinstance(module, FactorizedReduce):
        return module.after_relu(inp.relu)
    return module(inp.x)


class CandidateOp(nn.Module):
    """An op with an optional inner channel group gated between `pre` and `post`."""

    has_hidden = False

    def forward(self, x: torch.Tensor, hidden_gate: torch.Tensor | None = None) -> torch.Tensor:
        return self.post(apply_gate(self.pre(x), hidden_gate))

    def forward_shared(self, inp: SharedInput, hidden_gate: torch.Tensor | None = None) -> torch.Tensor:
        """forward(inp.x), with the leading ReLU shared among all ops that read `inp`."""
        return self.post(apply_gate(run_after_shared_relu(self.pre, inp), hidden_gate))

    @staticmethod
    def default_hidden(c_in: int, **kwargs: Any) -> int | None:
        return None


class ReLUConvBN(CandidateOp):
    def __init__(self, c_in, c_out, stride, hidden=None, tied=None, kernel=3):
        super().__init__()
        self.pre = nn.Sequential(nn.ReLU(), conv(c_in, c_out, kernel, stride), norm(c_out, "out"))
        self.post = nn.Identity()

    @staticmethod
    def cost(c_in, c_out, stride, h, w, hidden=None, tied=False, kernel=3) -> C.Cost:
        ho, wo = C.out_size(h, stride), C.out_size(w, stride)
        return C.conv(c_in, c_out, kernel, ho, wo) + C.batchnorm(c_out, ho, wo)


class SepConv(CandidateOp):
    """DARTS separable conv: two (ReLU, depthwise, pointwise, BN) stacks; the middle is prunable."""

    has_hidden = True

    def __init__(self, c_in, c_out, stride, hidden=None, tied=None, kernel=3):
        super().__init__()
        hidden = hidden or c_in
        self.pre = nn.Sequential(
            nn.ReLU(), conv(c_in, c_in, kernel, stride, groups=c_in, roles=("in", "in")),
            conv(c_in, hidden, 1, roles=("in", "hidden")), norm(hidden, "hidden"))
        self.post = nn.Sequential(
            nn.ReLU(), conv(hidden, hidden, kernel, groups=hidden, roles=("hidden", "hidden")),
            conv(hidden, c_out, 1, roles=("hidden", "out")), norm(c_out, "out"))

    @staticmethod
    def default_hidden(c_in, **kwargs):
        return c_in

    @staticmethod
    def cost(c_in, c_out, stride, h, w, hidden=None, tied=False, kernel=3) -> C.Cost:
        hidden = c_in if hidden is None else hidden
        ho, wo = C.out_size(h, stride), C.out_size(w, stride)
        return (C.depthwise_conv(c_in, kernel, ho, wo) + C.conv(c_in, hidden, 1, ho, wo)
                + C.batchnorm(hidden, ho, wo) + C.depthwise_conv(hidden, kernel, ho, wo)
                + C.conv(hidden, c_out, 1, ho, wo) + C.batchnorm(c_out, ho, wo))


class DilConv(CandidateOp):
    """DARTS dilated separable conv: ReLU, dilated depthwise, pointwise, BN."""

    def __init__(self, c_in, c_out, stride, hidden=None, tied=None, kernel=3, dilation=2):
        super().__init__()
        self.pre = nn.Sequential(
            nn.ReLU(), conv(c_in, c_in, kernel, stride, dilation, groups=c_in, roles=("in", "in")),
            conv(c_in, c_out, 1), norm(c_out, "out"))
        self.post = nn.Identity()

    @staticmethod
    def cost(c_in, c_out, stride, h, w, hidden=None, tied=False, kernel=3, dilation=2) -> C.Cost:
        ho, wo = C.out_size(h, stride), C.out_size(w, stride)
        return (C.depthwise_conv(c_in, kernel, ho, wo) + C.conv(c_in, c_out, 1, ho, wo)
                + C.batchnorm(c_out, ho, wo))


class MBConv(CandidateOp):
    """MobileNetV2 inverted residual body (the residual add belongs to the layer): the
    expansion width is prunable."""

    has_hidden = True

    def __init__(self, c_in, c_out, stride, hidden=None, tied=None, kernel=3, expansion=6):
        super().__init__()
        hidden = hidden or c_in * expansion
        self.pre = nn.Sequential(
            conv(c_in, hidden, 1, roles=("in", "hidden")), norm(hidden, "hidden"), nn.ReLU(),
            conv(hidden, hidden, kernel, stride, groups=hidden, roles=("hidden", "hidden")),
            norm(hidden, "hidden"), nn.ReLU())
        self.post = nn.Sequential(conv(hidden, c_out, 1, roles=("hidden", "out")), norm(c_out, "out"))

    @staticmethod
    def default_hidden(c_in, expansion=6, **kwargs):
        return c_in * expansion

    @staticmethod
    def cost(c_in, c_out, stride, h, w, hidden=None, tied=False, kernel=3, expansion=6) -> C.Cost:
        hidden = c_in * expansion if hidden is None else hidden
        ho, wo = C.out_size(h, stride), C.out_size(w, stride)
        return (C.conv(c_in, hidden, 1, h, w) + C.batchnorm(hidden, h, w)
                + C.depthwise_conv(hidden, kernel, ho, wo) + C.batchnorm(hidden, ho, wo)
                + C.conv(hidden, c_out, 1, ho, wo) + C.batchnorm(c_out, ho, wo))


def _projection(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), conv(c_in, c_out, 1, stride), norm(c_out, "out"))


def _tied(c_in, c_out, stride, tied) -> bool:
    return (c_in == c_out and stride == 1) if tied is None else bool(tied)


def _projection_unless_tied_cost(c_in, c_out, stride, h, w, tied) -> C.Cost:
    """Free when input and output are one channel group, else the 1x1 projection's cost."""
    if _tied(c_in, c_out, stride, tied):
        return C.Cost()
    ho, wo = C.out_size(h, stride), C.out_size(w, stride)
    return C.conv(c_in, c_out, 1, ho, wo) + C.batchnorm(c_out, ho, wo)


def _pool(mode: str, stride: int) -> nn.Module:
    return (nn.MaxPool2d(3, stride, 1) if mode == "max"
            else nn.AvgPool2d(3, stride, 1, count_include_pad=False))


class Pool(CandidateOp):
    """3x3 max or average pooling; untied, a 1x1 projection follows to change the width."""

    def __init__(self, c_in, c_out, stride, hidden=None, tied=None, mode="max"):
        super().__init__()
        if _tied(c_in, c_out, stride, tied):
            self.pre = _pool(mode, stride)
        else:  # the projection carries the stride (a strided pool would drop 3/4 of the work)
            self.pre = nn.Sequential(_pool(mode, 1), _projection(c_in, c_out, stride))
        self.post = nn.Identity()

    @staticmethod
    def cost(c_in, c_out, stride, h, w, hidden=None, tied=None, mode="max") -> C.Cost:
        return _projection_unless_tied_cost(c_in, c_out, stride, h, w, tied)


class FactorizedReduce(nn.Module):
    """DARTS' stride-2 identity: two 1x1 stride-2 convs, one on pixels at even and one at odd
    offsets, concatenated. `out_a`/`out_b` are the two halves of the output group, so a pruned
    compact model keeps the same number of channels in each half."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce splits its output in halves: c_out must be even, "
                             f"got {c_out}")
        self.act = nn.ReLU()
        self.conv_a = conv(c_in, c_out // 2, 1, 2, roles=("in", "out_a"))
        self.conv_b = conv(c_in, c_out // 2, 1, 2, roles=("in", "out_b"))
        self.norm = norm(c_out, "out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_relu(self.act(x))

    def after_relu(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.cat([self.conv_a(x), self.conv_b(x[:, :, 1:, 1:])], dim=1))

    @staticmethod
    def cost(c_in, c_out, h: int, w: int) -> C.Cost:
        ho, wo = C.out_size(h, 2), C.out_size(w, 2)
        return C.conv(c_in, c_out, 1, ho, wo) + C.batchnorm(c_out, ho, wo)  # two halves of c_out


class Skip(CandidateOp):
    """Identity. Tied at stride 2 (a DARTS reduction edge): FactorizedReduce, which keeps the
    channel group. Untied (width change): a ReLU-1x1 conv-BN projection."""

    def __init__(self, c_in, c_out, stride, hidden=None, tied=None):
        super().__init__()
        if not _tied(c_in, c_out, stride, tied):
            self.pre = _projection(c_in, c_out, stride)
        else:
            self.pre = nn.Identity() if stride == 1 else FactorizedReduce(c_in, c_out)
        self.post = nn.Identity()

    @staticmethod
    def cost(c_in, c_out, stride, h, w, hidden=None, tied=None) -> C.Cost:
        if _tied(c_in, c_out, stride, tied) and stride == 2:
            return FactorizedReduce.cost(c_in, c_out, h, w)
        return _projection_unless_tied_cost(c_in, c_out, stride, h, w, tied)


class Zero(CandidateOp):
    """No connection. In a residual layer choosing it removes the layer: depth is searched."""

    def __init__(self, c_in, c_out, stride, hidden=None, tied=None):
        super().__init__()
        self.c_out, self.stride = c_out, stride

    def forward(self, x, hidden_gate=None):
        n, _, h, w = x.shape
        return x.new_zeros(n, self.c_out, C.out_size(h, self.stride), C.out_size(w, self.stride))

    @staticmethod
    def cost(c_in, c_out, stride, h, w, hidden=None, tied=None) -> C.Cost:
        return C.Cost()


@dataclass(frozen=True)
class OpSpec:
    """A registered op: its class and the fixed arguments (kernel, dilation, ...) of this name."""

    cls: type[CandidateOp]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def has_hidden(self) -> bool:
        return self.cls.has_hidden

    @property
    def kernel(self) -> int:
        return self.kwargs.get("kernel", 3 if self.cls is Pool else 1)

    @property
    def dilation(self) -> int:
        return self.kwargs.get("dilation", 1)

    def build(self, c_in: int, c_out: int, stride: int, hidden: int | None = None,
              tied: bool | None = None) -> CandidateOp:
        return self.cls(c_in, c_out, stride, hidden=hidden, tied=tied, **self.kwargs)

    def default_hidden(self, c_in: int) -> int | None:
        return self.cls.default_hidden(c_in, **self.kwargs)

    def cost(self, c_in, c_out, stride: int, h: int, w: int, hidden=None,
             tied: bool | None = None) -> C.Cost:
        return self.cls.cost(c_in, c_out, stride, h, w, hidden=hidden, tied=tied, **self.kwargs)


for _k in (3, 5):
    OPS.add(f"conv_{_k}x{_k}", OpSpec(ReLUConvBN, {"kernel": _k}))
    OPS.add(f"sep_conv_{_k}x{_k}", OpSpec(SepConv, {"kernel": _k}))
    OPS.add(f"dil_conv_{_k}x{_k}", OpSpec(DilConv, {"kernel": _k, "dilation": 2}))
    for _e in (3, 6):
        OPS.add(f"mbconv_k{_k}_e{_e}", OpSpec(MBConv, {"kernel": _k, "expansion": _e}))
OPS.add("max_pool_3x3", OpSpec(Pool, {"mode": "max"}))
OPS.add("avg_pool_3x3", OpSpec(Pool, {"mode": "avg"}))
OPS.add("skip_connect", OpSpec(Skip))
OPS.add("zero", OpSpec(Zero))


def get_op(name: str) -> OpSpec:
    return OPS.get(name)


def build_op(name: str, c_in: int, c_out: int, stride: int, hidden: int | None = None,
             tied: bool | None = None) -> CandidateOp:
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    return get_op(name).build(c_in, c_out, stride, hidden=hidden, tied=tied)


def is_zero(name: str) -> bool:
    return get_op(name).cls is Zero
