"""The record of a pruned user network and its rebuild without pickling or search code.

A pruned torchvision/timm/user network is its source (how to build the original) plus the new
shape of every tensor pruning changed and the blocks it removed. Loading builds the original
structure from the source (no pretrained weights, no checkpoint), resizes those tensors in place
(so a timm conv subclass keeps its own forward), swaps removed blocks for identities, and the
caller loads the safetensors weights into it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from maskednas.export.model_source import build_source, check_trusted, replace_module
from maskednas.ops import Cost
from maskednas.ops.layer_rules import width_attributes

FORMAT_VERSION = 1


@dataclass(frozen=True)
class PrunedArchitecture:
    source: str
    in_channels: int
    input_size: int
    num_classes: int
    macs: int
    params: int
    widths: dict[str, int] = field(default_factory=dict)  # kept channels per group (to read)
    removed: tuple[str, ...] = ()  # residual blocks replaced by identity (depth pruning)
    # module name -> {"tensors": {name: shape}, <width attribute>: value}, where pruning changed it
    modules: dict[str, dict] = field(default_factory=dict)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    space: str = "model"
    # residual branches replaced by zeros (a transformer block's attention or MLP; their norms
    # and layer scales are in `removed`)
    zeroed: tuple[str, ...] = ()
    # an hf: source's architecture fields (`model.hf_config`): the network is rebuilt from them
    hf_config: dict = field(default_factory=dict)
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.version != FORMAT_VERSION:
            raise ValueError(f"pruned-model format version {self.version} is not supported "
                             f"(this code reads version {FORMAT_VERSION})")

    def cost(self) -> Cost:
        """MACs and params of the pruned network (fvcore's convention, counted when derived)."""
        return Cost(self.macs, self.params)

    def removed_choices(self) -> tuple[str, ...]:
        """The depth choices removed: whole blocks and zeroed branches (a branch's norm and
        layer scale, in `removed` with it, are not choices)."""
        branch_blocks = {z.rpartition(".")[0] for z in self.zeroed}
        return (*(n for n in self.removed if n.rpartition(".")[0] not in branch_blocks), *self.zeroed)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "PrunedArchitecture":
        data = dict(data)
        for key in ("removed", "mean", "std", "zeroed"):
            data[key] = tuple(data.get(key, ()))
        return cls(**data)


def layer_shapes(module: nn.Module) -> dict:
    """What a rebuild needs to give `module` its current widths."""
    out = {"tensors": {n: list(t.shape) for n, t in [*module.named_parameters(recurse=False),
                                                       *module.named_buffers(recurse=False)]
                       if t is not None and t.dim() > 0}}
    for attr in width_attributes():  # plain attributes only (timm's ConvNormAct derives them)
        value = vars(module).get(attr)
        if isinstance(value, (int, tuple)) and not isinstance(value, bool):
            out[attr] = list(value) if isinstance(value, tuple) else value
    return out


def changed_layers(original: nn.Module, pruned: nn.Module) -> dict[str, dict]:
    """`layer_shapes` of every module of `pruned` whose shapes differ from `original`'s."""
    before = dict(original.named_modules())
    return {name: shapes for name, m in pruned.named_modules()
            if name in before and (shapes := layer_shapes(m)) != layer_shapes(before[name])}


def resize_layer(module: nn.Module, shapes: dict, name: str) -> None:
    allowed = width_attributes()
    for attr, value in shapes.items():  # checked before anything changes
        if attr != "tensors" and (attr not in allowed or isinstance(value, bool)
                                  or not isinstance(value, (int, list))):
            raise ValueError(f"{name}: the record sets {attr!r} to {value!r}; a pruned-model "
                             f"record sets only the width attributes of registered layer rules "
                             f"({', '.join(sorted(allowed))}): register the rule that declares "
                             f"{attr!r} before loading")
    for tensor_name, shape in shapes["tensors"].items():
        old = getattr(module, tensor_name, None)
        if not isinstance(old, torch.Tensor):
            raise ValueError(f"{name} has no tensor {tensor_name!r} to resize")
        new = torch.empty(shape, dtype=old.dtype)
        if isinstance(old, nn.Parameter):
            setattr(module, tensor_name, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            module._buffers[tensor_name] = new
    for attr, value in shapes.items():
        if attr != "tensors":
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)


def build_pruned(arch: PrunedArchitecture, trust_source=False) -> nn.Module:
    """The pruned network's modules at the recorded shapes (weights uninitialised: load them).
    A user-factory source is refused unless trusted (`model_source.check_trusted`)."""
    check_trusted(arch.source, trust_source, "the pruned-model record")
    model = build_source(arch.source, arch.num_classes, arch.in_channels, hf_config=arch.hf_config)
    modules = dict(model.named_modules())
    unknown = [n for n in [*arch.modules, *arch.removed, *arch.zeroed] if n not in modules]
    if unknown:
        raise ValueError(f"{arch.source} has no module(s) {unknown[:5]}: the record was made from "
                         f"another version of the model")
    for name, shapes in arch.modules.items():
        resize_layer(modules[name], shapes, name)
    remove_blocks(model, arch.removed)
    zero_branches(model, arch.zeroed)
    model.arch = arch
    return model


class SkippedBlock(nn.Identity):
    """A removed residual block: its input, whatever else its forward is given (DLA's blocks
    are called with their shortcut and children too)."""

    def forward(self, x, *args, **kwargs):
        return x


def remove_blocks(model: nn.Module, names) -> None:
    """Depth pruning: each named residual block becomes a `SkippedBlock` (an `nn.Identity`)."""
    for name in names:
        replace_module(model, name, SkippedBlock())


class ZeroBranch(nn.Module):
    """A removed residual branch (a transformer block's attention or MLP): zeros shaped as its
    input, which the block adds to its stream."""

    def forward(self, x, *args, **kwargs):
        return torch.zeros_like(x)


def zero_branches(model: nn.Module, names) -> None:
    for name in names:
        replace_module(model, name, ZeroBranch())
