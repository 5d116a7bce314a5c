"""The `Architecture` record: the contract between search, export and whoever loads a subnet.

Plain, frozen data that round-trips through JSON. It holds everything `build` needs (op per
layer and kept channel counts) and what a reader wants to see (kernel, stride, dilation), plus the
input preprocessing so an exported model can be used without the training code. Macro-space
networks are a chain of `layers`; DARTS-space networks a chain of `cells` (see export/cells.py),
whose genotype `genotype()` returns in DARTS' format.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from maskednas.export.cells import CellChoice, EdgeChoice, cell_chain, genotype_of, reduction_cells
from maskednas.ops import Cost, Head, Stem, get_op, is_zero
from maskednas.ops.cost import out_size

FORMAT_VERSION = 1


@dataclass(frozen=True)
class LayerChoice:
    op: str
    c_in: int
    c_out: int
    stride: int
    residual: bool  # y = x + op(x); a residual layer whose op is `zero` is removed
    hidden: int | None = None  # kept inner width of ops that have one
    kernel: int = 1
    dilation: int = 1

    @property
    def removed(self) -> bool:
        return self.residual and is_zero(self.op)


@dataclass(frozen=True)
class Architecture:
    """A derived network of the macro or DARTS space, as plain data that round-trips JSON.

    >>> from maskednas import Architecture, build
    >>> from maskednas.export.architecture import LayerChoice
    >>> arch = Architecture(in_channels=1, input_size=8, num_classes=10, stem_channels=4,
    ...                     layers=(LayerChoice("conv_3x3", 4, 8, 2, False, kernel=3),))
    >>> Architecture.from_json(arch.to_json()) == arch
    True
    >>> arch.cost().macs  # stem 2304 + 512 (BN), conv 4608 + 256, pooling 128, classifier 80
    7888
    """
    in_channels: int
    input_size: int
    num_classes: int
    stem_channels: int
    layers: tuple[LayerChoice, ...]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    space: str = "macro"
    version: int = FORMAT_VERSION
    cells: tuple[CellChoice, ...] = ()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.version != FORMAT_VERSION:
            raise ValueError(f"architecture format version {self.version} is not supported "
                             f"(this code reads version {FORMAT_VERSION})")
        if self.cells:
            return self._validate_cells()
        c_prev = self.stem_channels
        for i, layer in enumerate(self.layers):
            spec = get_op(layer.op)  # KeyError listing the registered ops
            if layer.c_in != c_prev:
                raise ValueError(f"layer {i}: c_in={layer.c_in} but the previous layer gives {c_prev}")
            if min(layer.c_in, layer.c_out) < 1 or (layer.hidden is not None and layer.hidden < 1):
                raise ValueError(f"layer {i}: every channel count must be >= 1, got {layer}")
            if layer.residual and (layer.c_in != layer.c_out or layer.stride != 1):
                raise ValueError(f"layer {i}: a residual layer needs c_in == c_out and stride 1")
            if (layer.kernel, layer.dilation) != (spec.kernel, spec.dilation):
                raise ValueError(f"layer {i}: {layer.op} has kernel {spec.kernel} and dilation "
                                 f"{spec.dilation}, the record says {layer.kernel} and {layer.dilation}")
            c_prev = layer.c_out

    def _validate_cells(self) -> None:
        if self.layers:
            raise ValueError("an architecture has either layers (macro space) or cells (DARTS "
                             "space), not both")
        ins, reduce_prev, size = [self.stem_channels] * 2, False, self.input_size
        for k, cell in enumerate(self.cells):
            cell.validate(k, ins[0], ins[1], reduce_prev)
            if cell.reduction and size % 2:
                raise ValueError(f"cell {k} reduces a {size}x{size} input; sizes must halve evenly")
            ins, reduce_prev, size = [ins[1], cell.out_channels], cell.reduction, cell.out_size(size)

    @property
    def out_channels(self) -> int:
        if self.cells:
            return self.cells[-1].out_channels
        return self.layers[-1].c_out if self.layers else self.stem_channels

    def genotype(self) -> dict[str, list]:
        """DARTS genotype of a cell network: normal/reduce [(op, source), ...] and concats."""
        if not self.cells:
            raise ValueError(f"a {self.space} architecture has layers, not cells: no genotype")
        return genotype_of(self.cells)

    # -- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Architecture":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown architecture fields {sorted(unknown)}; expected {sorted(known)}")
        data = dict(data)
        data["layers"] = tuple(LayerChoice(**layer) for layer in data.get("layers", ()))
        data["cells"] = tuple(
            CellChoice(**{**cell, "edges": tuple(EdgeChoice(**e) for e in cell["edges"]),
                          "concat": tuple(cell.get("concat", (2, 3, 4, 5)))})
            for cell in data.get("cells", ()))
        data["mean"], data["std"] = tuple(data.get("mean", ())), tuple(data.get("std", ()))
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Architecture":
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | Path):
        """The record in an arch.json: an `Architecture`, or a `PrunedArchitecture` (a user's
        network, recorded by its source)."""
        data = json.loads(Path(path).read_text())
        if isinstance(data, dict) and data.get("space") == "model":
            from maskednas.export.pruned_model import PrunedArchitecture
            return PrunedArchitecture.from_dict(data)
        return cls.from_dict(data)

    # -- cost -----------------------------------------------------------------------------------
    def cost(self) -> Cost:
        """Exact MACs and params of the compact model (fvcore's convention, see ops/cost.py)."""
        size = self.input_size
        total = Stem.cost(self.in_channels, self.stem_channels, size, size)
        for cell in self.cells:
            total = total + cell.cost(size)
            size = cell.out_size(size)
        for layer in self.layers:
            if not layer.removed:
                total = total + get_op(layer.op).cost(layer.c_in, layer.c_out, layer.stride, size,
                                                      size, hidden=layer.hidden, tied=layer.residual)
            size = out_size(size, layer.stride)
        return total + Head.cost(self.out_channels, self.num_classes, size, size)


def evaluation_architecture(arch: Architecture, cells: int = 20, channels: int = 36,
                            stem_multiplier: int = 3) -> Architecture:
    """The DARTS evaluation network of a searched cell architecture: its genotype in `cells`
    cells (reductions at 1/3 and 2/3 depth) of `channels` initial width, doubled at each
    reduction. It is trained from scratch, as in the DARTS protocol."""
    genotype = arch.genotype()
    if "normal" not in genotype or "reduce" not in genotype:
        raise ValueError("the evaluation network needs both a normal and a reduction cell genotype")
    if channels < 2 or channels % 2 or cells < 1:
        raise ValueError(f"evaluation cells must be >= 1 and channels even, got {cells}, {channels}")
    reductions = reduction_cells(cells)
    widths, c = [], channels
    for k in range(cells):
        c = 2 * c if k in reductions else c
        widths.append(c)
    multiplier = len(genotype["normal_concat"])
    chain = cell_chain(stem_multiplier * channels, widths, [k in reductions for k in range(cells)],
                       genotype, multiplier)
    return Architecture(arch.in_channels, arch.input_size, arch.num_classes,
                        stem_multiplier * channels, (), arch.mean, arch.std, space=arch.space,
                        cells=chain)
