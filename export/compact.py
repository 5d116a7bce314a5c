"""Build a compact model from an `Architecture`, with nothing but `ops/` and `export/`."""
from __future__ import annotations

import torch
from timm.layers import DropPath
from torch import nn

from maskednas.export.architecture import Architecture, LayerChoice
from maskednas.export.cells import CellChoice
from maskednas.ops import FactorizedReduce, Head, Stem, build_op, get_op
from maskednas.ops.candidates import ReLUConvBN, Skip


class CompactLayer(nn.Module):
    def __init__(self, choice: LayerChoice) -> None:
        super().__init__()
        self.residual = choice.residual
        self.op = build_op(choice.op, choice.c_in, choice.c_out, choice.stride,
                           hidden=choice.hidden, tied=choice.residual)
        self.drop_path = DropPath(0.0)  # stochastic depth of the residual branch (training only)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.op(x)) if self.residual else self.op(x)


class CompactCell(nn.Module):
    """A derived DARTS cell: each node sums its two edges; the output concatenates the nodes."""

    def __init__(self, choice: CellChoice) -> None:
        super().__init__()
        c = choice.channels
        self.preprocess0 = (FactorizedReduce(choice.c_in0, c) if choice.reduce_in0
                            else ReLUConvBN(choice.c_in0, c, 1, kernel=1))
        self.preprocess1 = ReLUConvBN(choice.c_in1, c, 1, kernel=1)
        self.edges = nn.ModuleList(build_op(e.op, c, c, e.stride, hidden=c, tied=True)
                                   for e in choice.edges)
        self.sources, self.concat = [e.source for e in choice.edges], list(choice.concat)
        # DARTS' evaluation drop-path: every edge but an identity may be dropped (training only)
        self.drop_path = DropPath(0.0)
        self.droppable = [not (get_op(e.op).cls is Skip and e.stride == 1) for e in choice.edges]

    def edge(self, e: int, states: list[torch.Tensor]) -> torch.Tensor:
        y = self.edges[e](states[self.sources[e]])
        return self.drop_path(y) if self.droppable[e] else y

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(0, len(self.edges), 2):
            states.append(self.edge(i, states) + self.edge(i + 1, states))
        return torch.cat([states[j] for j in self.concat], dim=1)


class CompactNet(nn.Module):
    """The searched network as plain modules: a chain of layers (removed layers become
    `nn.Identity`), or of cells that each read the outputs of the two cells before them."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        self.stem = Stem(arch.in_channels, arch.stem_channels)
        self.layers = nn.Sequential(
            *[nn.Identity() if c.removed else CompactLayer(c) for c in arch.layers])
        self.cells = nn.ModuleList(CompactCell(c) for c in arch.cells)
        self.head = Head(arch.out_channels, arch.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        s0 = s1 = x
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.head(s1)


def build(arch, trust_source=False) -> nn.Module:
    """The model of an architecture record: a `CompactNet`, or a pruned user network (its
    source rebuilt at the recorded shapes, see export/pruned_model.py). A record whose source
    is a user's factory (`package.module:function`) is built only with `trust_source` (True, or
    the module prefixes to trust): building it imports and runs that code.

    >>> from maskednas import Architecture, build
    >>> from maskednas.export.architecture import LayerChoice
    >>> arch = Architecture(in_channels=1, input_size=8, num_classes=10, stem_channels=4,
    ...                     layers=(LayerChoice("conv_3x3", 4, 8, 2, False, kernel=3),))
    >>> import torch
    >>> build(arch)(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """
    from maskednas.export.model_source import trusted_prefixes
    from maskednas.export.pruned_model import PrunedArchitecture, build_pruned
    trusted_prefixes(trust_source)  # a malformed value is refused whatever the record
    return (build_pruned(arch, trust_source) if isinstance(arch, PrunedArchitecture)
            else CompactNet(arch))


def set_drop_path(model: nn.Module, prob: float) -> None:
    """Drop probability of every cell edge and residual branch (0: off; eval mode never drops)."""
    for m in model.modules():
        if isinstance(m, DropPath):
            m.drop_prob = prob
