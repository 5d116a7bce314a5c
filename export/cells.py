"""Cell records of the DARTS space: what `Architecture.cells` holds, and their exact cost.

A cell is its genotype (two (op, source) edges per node, DARTS' format) plus the kept widths:
`channels` for every state of the cell, and the widths of its two inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

from maskednas.ops import Cost, get_op, is_zero
from maskednas.ops.cost import batchnorm, conv, out_size


def reduction_cells(cells: int) -> tuple[int, ...]:
    """Indices of the reduction cells in a chain of `cells`: at 1/3 and 2/3 depth, as in DARTS."""
    return tuple(sorted({cells // 3, 2 * cells // 3}))


def preprocess_cost(c_in, channels, size) -> Cost:
    """Bringing one cell input of `c_in` channels to the cell's width at the cell's input
    resolution `size`: a 1x1 conv + BN, or FactorizedReduce from twice that resolution, which
    costs exactly the same (two 1x1 convs of half the width each). Widths and `size` may be
    tensors (the supernet's cost runs over all cells at once)."""
    return conv(c_in, channels, 1, size, size) + batchnorm(channels, size, size)


def edge_stride(reduction: bool, source: int) -> int:
    """Edges from the cell inputs of a reduction cell halve the resolution; all others keep it."""
    return 2 if reduction and source < 2 else 1


@dataclass(frozen=True)
class EdgeChoice:
    op: str
    source: int  # 0, 1: the cell inputs (cells k-2 and k-1); 2 + i: intermediate node i
    stride: int
    kernel: int = 1
    dilation: int = 1


@dataclass(frozen=True)
class CellChoice:
    reduction: bool
    c_in0: int  # width of input 0 (all copies: the concatenated nodes of cell k-2)
    c_in1: int
    channels: int  # kept width of every state of the cell
    reduce_in0: bool  # input 0 has twice the resolution (the previous cell reduced): FactorizedReduce
    edges: tuple[EdgeChoice, ...]  # two per node, node by node, strongest first
    concat: tuple[int, ...] = (2, 3, 4, 5)

    @property
    def nodes(self) -> int:
        return len(self.edges) // 2

    @property
    def out_channels(self) -> int:
        return len(self.concat) * self.channels

    def cost(self, size: int) -> Cost:
        """Exact MACs and params at input resolution `size` (fvcore's convention)."""
        total = (preprocess_cost(self.c_in0, self.channels, size)
                 + preprocess_cost(self.c_in1, self.channels, size))
        for e in self.edges:
            s = size if e.source < 2 else self.out_size(size)
            total = total + get_op(e.op).cost(self.channels, self.channels, e.stride, s, s,
                                              hidden=self.channels, tied=True)
        return total

    def out_size(self, size: int) -> int:
        return out_size(size, 2) if self.reduction else size

    def validate(self, index: int, c_in0: int, c_in1: int, reduce_in0: bool) -> None:
        where = f"cell {index}"
        if (self.c_in0, self.c_in1, self.reduce_in0) != (c_in0, c_in1, reduce_in0):
            raise ValueError(f"{where}: inputs (c_in0, c_in1, reduce_in0) = "
                             f"{(self.c_in0, self.c_in1, self.reduce_in0)}, but the previous cells "
                             f"give {(c_in0, c_in1, reduce_in0)}")
        if self.channels < 2 or self.channels % 2:
            raise ValueError(f"{where}: channels must be even and >= 2, got {self.channels}")
        if not self.edges or len(self.edges) % 2:
            raise ValueError(f"{where}: needs two edges per node, got {len(self.edges)} edges")
        for i, e in enumerate(self.edges):
            spec, node = get_op(e.op), i // 2
            if is_zero(e.op):
                raise ValueError(f"{where}, node {node}: 'zero' is not an edge of a derived cell")
            if not 0 <= e.source < node + 2:
                raise ValueError(f"{where}, node {node}: source {e.source} must be in [0, {node + 1}]")
            stride = edge_stride(self.reduction, e.source)
            if e.stride != stride:
                raise ValueError(f"{where}, node {node}: an edge from state {e.source} has stride "
                                 f"{stride}, the record says {e.stride}")
            if (e.kernel, e.dilation) != (spec.kernel, spec.dilation):
                raise ValueError(f"{where}: {e.op} has kernel {spec.kernel} and dilation "
                                 f"{spec.dilation}, the record says {e.kernel} and {e.dilation}")
        if not self.concat or any(not 2 <= j < self.nodes + 2 for j in self.concat):
            raise ValueError(f"{where}: concat must name nodes 2..{self.nodes + 1}, got {self.concat}")


def edges_from_genotype(pairs, reduction: bool) -> tuple[EdgeChoice, ...]:
    """DARTS genotype pairs [(op, source), ...] -> edge records."""
    edges = []
    for op, source in pairs:
        spec = get_op(op)
        edges.append(EdgeChoice(op, int(source), edge_stride(reduction, source),
                                spec.kernel, spec.dilation))
    return tuple(edges)


def cell_chain(stem_channels: int, widths: list[int], reductions: list[bool],
               genotype: dict[str, list], multiplier: int) -> tuple[CellChoice, ...]:
    """Cells in sequence, each reading the outputs of the two before it (the stem for the first)."""
    cells, ins, reduce_prev = [], [stem_channels, stem_channels], False
    for c, reduction in zip(widths, reductions):
        pairs = genotype["reduce" if reduction else "normal"]
        cell = CellChoice(reduction, ins[0], ins[1], c, reduce_prev,
                          edges_from_genotype(pairs, reduction),
                          tuple(range(2, 2 + multiplier)))
        cells.append(cell)
        ins, reduce_prev = [ins[1], cell.out_channels], reduction
    return tuple(cells)


def genotype_of(cells: tuple[CellChoice, ...]) -> dict[str, list]:
    """The DARTS genotype (ops and sources of the first normal and reduction cells)."""
    out = {}
    for kind, reduction in (("normal", False), ("reduce", True)):
        cell = next((c for c in cells if c.reduction == reduction), None)
        if cell is not None:
            out[kind] = [(e.op, e.source) for e in cell.edges]
            out[f"{kind}_concat"] = list(cell.concat)
    return out
