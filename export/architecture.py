"""The `Architecture` record: the contract between search, export and whoever loads a subnet.

Plain, frozen data that round-trips through JSON. It holds everything `build` needs (op per
layer and kept channel counts) and what a reader wants to see (kernel, stride, dilation), plus the
input preprocessing so an exported model can be used without the training code.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ops import Cost, Head, Stem, get_op, is_zero
from ops.cost import out_size

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
    in_channels: int
    input_size: int
    num_classes: int
    stem_channels: int
    layers: tuple[LayerChoice, ...]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    space: str = "macro"
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.version != FORMAT_VERSION:
            raise ValueError(f"architecture format version {self.version} is not supported "
                             f"(this code reads version {FORMAT_VERSION})")
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

    @property
    def out_channels(self) -> int:
        return self.layers[-1].c_out if self.layers else self.stem_channels

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
        data["mean"], data["std"] = tuple(data.get("mean", ())), tuple(data.get("std", ()))
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Architecture":
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> "Architecture":
        return cls.from_json(Path(path).read_text())

    # -- cost -----------------------------------------------------------------------------------
    def cost(self) -> Cost:
        """Exact MACs and params of the compact model (fvcore's convention, see ops/cost.py)."""
        size = self.input_size
        total = Stem.cost(self.in_channels, self.stem_channels, size, size)
        for layer in self.layers:
            if not layer.removed:
                total = total + get_op(layer.op).cost(layer.c_in, layer.c_out, layer.stride, size,
                                                      size, hidden=layer.hidden, tied=layer.residual)
            size = out_size(size, layer.stride)
        return total + Head.cost(self.out_channels, self.num_classes, size, size)

    def summary(self) -> str:
        """A markdown table of the layers, for logs and TensorBoard."""
        rows = ["| layer | op | c_in | c_out | hidden | stride |", "|---|---|---|---|---|---|"]
        rows.append(f"| stem | conv_3x3 | {self.in_channels} | {self.stem_channels} | | 1 |")
        for i, l in enumerate(self.layers):
            op = "(removed)" if l.removed else l.op
            rows.append(f"| {i} | {op} | {l.c_in} | {l.c_out} | {l.hidden or ''} | {l.stride} |")
        return "\n".join(rows)
