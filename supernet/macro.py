"""Macro search space: stem, stages of layers, each layer a mixed op with channel masks.

The first layer of a stage changes resolution and width, so it picks among compute ops. Every
other layer is residual, y = x + mask * MixedOp(x), and may pick `zero`, which removes it: depth
is searched. All layers of a stage add into one residual stream, so they share one width mask;
ops with an inner width (sep conv middle, inverted-residual expansion) have a mask of their own.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import nn

from maskednas.export.architecture import Architecture, LayerChoice
from maskednas.export.compact import CompactLayer
from maskednas.latency.parts import LatencyPart
from maskednas.ops import ChannelMask, Head, MixedOp, Stem, apply_gate, get_op, is_zero
from maskednas.ops.cost import Cost, out_size
from maskednas.supernet.base import CopyPlan, Supernet, one_hot_max, register_space
from maskednas.ops.cost_polynomial import CostPolynomial

DEFAULT_CANDIDATES = ["conv_3x3", "sep_conv_3x3", "sep_conv_5x5", "mbconv_k3_e3", "mbconv_k3_e6",
                      "mbconv_k5_e3", "mbconv_k5_e6", "zero"]


@dataclass
class StageSpec:
    channels: int
    layers: int
    stride: int = 1


@dataclass
class MacroSpaceConfig:
    stem_channels: int = 16
    stages: list[StageSpec] = field(default_factory=lambda: [
        StageSpec(16, 2, 1), StageSpec(32, 2, 2), StageSpec(64, 2, 2)])
    candidates: list[str] = field(default_factory=lambda: list(DEFAULT_CANDIDATES))
    first_candidates: list[str] = field(default_factory=lambda: [
        n for n in DEFAULT_CANDIDATES if n != "zero"])
    mask_init: float = 1.0  # initial mask logit: gate 0.73 at temperature 1, unsaturated

    def validate(self) -> None:
        if not self.candidates or not self.first_candidates:
            raise ValueError(f"macro.candidates and macro.first_candidates must each name at least "
                             f"one op, got {self.candidates} and {self.first_candidates}")
        for name in (*self.candidates, *self.first_candidates):
            get_op(name)  # KeyError listing the registered ops
        if any(is_zero(n) for n in self.first_candidates):
            raise ValueError("'zero' cannot be a first-layer candidate: the first layer of a stage "
                             "changes shape and has no residual path, so 'zero' would cut the network")
        if not self.stages:
            raise ValueError("the macro space needs at least one stage")
        for i, s in enumerate(self.stages):
            if s.channels < 1 or s.layers < 1 or s.stride not in (1, 2):
                raise ValueError(f"stage {i}: channels and layers must be >= 1 and stride 1 or 2, got {s}")


def layer_op_costs(layer: "SearchLayer", channels) -> list[Cost]:
    """Cost of every candidate of a layer at the given group widths."""
    size = layer.in_size
    return [get_op(name).cost(channels[layer.in_group], channels[layer.out_group], layer.stride,
                              size, size, hidden=channels[group] if group else None,
                              tied=layer.residual)
            for name, group in zip(layer.names, layer.hidden_groups)]


class SearchLayer(nn.Module):
    """One layer of the supernet: a mixed op whose output channels are gated by a shared mask."""

    def __init__(self, name: str, names: list[str], c_in: int, c_out: int, stride: int,
                 residual: bool, in_group: str, out_group: str, in_size: int) -> None:
        super().__init__()
        self.name, self.residual, self.stride, self.in_size = name, residual, stride, in_size
        self.c_in, self.c_out = c_in, c_out
        self.in_group, self.out_group = in_group, out_group
        self.mixed = MixedOp(names, c_in, c_out, stride, tied=residual)
        self.hidden_groups = [f"{name}-{n}" if get_op(n).has_hidden else None for n in names]

    @property
    def names(self) -> tuple[str, ...]:
        return self.mixed.names

    def forward(self, x: torch.Tensor, weights: torch.Tensor,
                gates: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = [gates[g] if g else None for g in self.hidden_groups]
        out = apply_gate(self.mixed(x, weights, hidden), gates[self.out_group])
        return x + out if self.residual else out


@register_space("macro", MacroSpaceConfig)
class MacroSupernet(Supernet):
    def __init__(self, space: MacroSpaceConfig, in_channels: int, num_classes: int,
                 input_size: int) -> None:
        super().__init__(space, in_channels, num_classes, input_size)
        self.stem = Stem(in_channels, space.stem_channels)
        self.masks["stem"] = ChannelMask(space.stem_channels, space.mask_init)
        layers, c_prev, group_prev, size = [], space.stem_channels, "stem", input_size
        for k, stage in enumerate(space.stages, start=1):
            group = f"s{k}"
            self.masks[group] = ChannelMask(stage.channels, space.mask_init)
            for j in range(stage.layers):
                first = j == 0
                names = space.first_candidates if first else space.candidates
                layer = SearchLayer(f"s{k}l{j}", names, c_prev, stage.channels,
                                    stage.stride if first else 1, residual=not first,
                                    in_group=group_prev, out_group=group, in_size=size)
                for n, g in zip(layer.names, layer.hidden_groups):
                    if g:
                        self.masks[g] = ChannelMask(get_op(n).default_hidden(c_prev), space.mask_init)
                self.alphas[layer.name] = nn.Parameter(torch.zeros(len(names)))
                layers.append(layer)
                size = out_size(size, layer.stride)
                c_prev, group_prev = stage.channels, group
        self.layers = nn.ModuleList(layers)
        self.head = Head(c_prev, num_classes)
        self.final_size, self.final_group = size, group_prev

    # -- architecture state ---------------------------------------------------------------------
    def op_weights(self, temperature=None) -> dict[str, torch.Tensor]:
        """Per layer: softmax(alpha / temperature), or one-hot on the op `restrict_ops` set."""
        t = self.temperature if temperature is None else temperature
        out = {}
        for layer in self.layers:
            alpha = self.alphas[layer.name]
            if layer.mixed.active is None:
                out[layer.name] = torch.softmax(alpha / t, dim=0)
            else:
                # compared on the device: a tensor made from the index would be a host copy per step
                out[layer.name] = (torch.arange(len(alpha), device=alpha.device)
                                   == layer.mixed.active).to(alpha.dtype)
        return out

    def op_logits(self) -> dict[str, torch.Tensor]:
        logits, weights = super().op_logits(), self.op_weights()
        return {layer.name: logits[layer.name] if layer.mixed.active is None else weights[layer.name]
                for layer in self.layers}

    def select(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One-hot on the highest-scored op of every layer (`zero` included: depth is searched)."""
        return {name: one_hot_max(w) for name, w in scores.items()}

    def derive_ops(self, scores: dict[str, torch.Tensor] | None = None) -> dict[str, str]:
        """Layer name -> chosen op (the highest alpha, or the highest of `scores`)."""
        scores = self.op_logits() if scores is None else scores
        return {layer.name: layer.names[int(scores[layer.name].argmax())] for layer in self.layers}

    def used_groups(self, ops: dict[str, str]) -> list[str]:
        """Channel groups the derived network has: stem, stages, inner widths of the chosen ops."""
        groups = {"stem"}
        for layer in self.layers:
            groups |= {layer.in_group, layer.out_group}
            g = layer.hidden_groups[layer.names.index(ops[layer.name])]
            if g:
                groups.add(g)
        return [name for name in self.masks if name in groups]

    def choice_rows(self, weights) -> dict[str, tuple[tuple[str, ...], torch.Tensor]]:
        """Per layer: its op names and weights (for logging)."""
        return {layer.name: (layer.names, weights[layer.name]) for layer in self.layers}

    def op_scores(self, widths: dict[str, int]) -> dict[str, torch.Tensor]:
        """MACs of every candidate of every layer at these widths."""
        return {layer.name: torch.tensor([float(c.macs) for c in layer_op_costs(layer, widths)],
                                         dtype=torch.float64) for layer in self.layers}

    def cost(self, weights, channels) -> Cost:
        """Cost given per-layer op weights (probabilities or one-hot) and group widths (all
        groups): `cost_formula`, evaluated as the polynomial it is."""
        return self._cost_polynomial(weights, channels)

    @functools.cached_property
    def _cost_polynomial(self) -> CostPolynomial:
        return CostPolynomial(self.cost_formula, self.full_widths(),
                              {layer.name: len(layer.names) for layer in self.layers})

    def cost_formula(self, weights, channels) -> Cost:
        """The cost, layer by layer: every candidate's cost at these widths times its weight."""
        total = Stem.cost(self.in_channels, channels["stem"], self.input_size, self.input_size)
        for layer in self.layers:
            for w, c in zip(weights[layer.name], layer_op_costs(layer, channels)):
                total = total + c * w
        return total + Head.cost(channels[self.final_group], self.num_classes, self.final_size,
                                 self.final_size)

    def latency_parts(self) -> list[LatencyPart]:
        """The stem, every non-zero candidate of every layer (as the compact model builds it,
        residual add included) and the head; a removed layer costs nothing."""
        full = self.full_widths()
        stem_size = (self.in_channels, self.input_size, self.input_size)
        parts = [LatencyPart("stem", ("stem",), (full["stem"],),
                             lambda w: (Stem(self.in_channels, w[0]), stem_size),
                             locate=lambda arch: (arch.stem_channels,))]
        for index, layer in enumerate(self.layers):
            for i, (op, hidden) in enumerate(zip(layer.names, layer.hidden_groups)):
                if not is_zero(op):
                    parts.append(self._layer_part(index, layer, i, op, hidden, full))
        final = (self.final_group,)
        parts.append(LatencyPart("head", final, (full[self.final_group],),
                                 lambda w: (Head(w[0], self.num_classes),
                                            (w[0], self.final_size, self.final_size)),
                                 locate=lambda arch: (arch.out_channels,)))
        return parts

    def _layer_part(self, index: int, layer: SearchLayer, i: int, op: str, hidden: str | None,
                    full: dict[str, int]) -> LatencyPart:
        """Candidate `op` of `layer`: its widths are those of the layer's groups (input and
        output are one group in a residual layer) and of its own inner group."""
        groups = tuple(dict.fromkeys(g for g in (layer.in_group, layer.out_group, hidden) if g))
        spec = get_op(op)

        def build(widths):
            w = dict(zip(groups, widths))
            choice = LayerChoice(op, w[layer.in_group], w[layer.out_group], layer.stride,
                                 layer.residual, w[hidden] if hidden else None, spec.kernel,
                                 spec.dilation)
            return CompactLayer(choice), (choice.c_in, layer.in_size, layer.in_size)

        def locate(arch):
            choice = arch.layers[index]
            if choice.op != op:
                return None
            w = {layer.in_group: choice.c_in, layer.out_group: choice.c_out, hidden: choice.hidden}
            return tuple(w[g] for g in groups)

        return LatencyPart(f"{layer.name}/{op}", groups, tuple(full[g] for g in groups), build,
                           choice=(layer.name, i), locate=locate)

    def restrict_ops(self, ops: dict[str, str] | None) -> None:
        for layer in self.layers:
            layer.mixed.restrict(None if ops is None else layer.names.index(ops[layer.name]))

    # -- records and slimming -------------------------------------------------------------------
    def architecture(self, ops: dict[str, str], widths, mean=(), std=()) -> Architecture:
        layers = []
        for layer in self.layers:
            op = ops[layer.name]
            spec, group = get_op(op), layer.hidden_groups[layer.names.index(op)]
            layers.append(LayerChoice(op, widths[layer.in_group], widths[layer.out_group],
                                      layer.stride, layer.residual,
                                      widths[group] if group else None, spec.kernel, spec.dilation))
        return Architecture(self.in_channels, self.input_size, self.num_classes, widths["stem"],
                            tuple(layers), tuple(mean), tuple(std), space=self.space_name)

    def copy_plan(self, model, arch: Architecture, keep) -> CopyPlan:
        plan = [(self.stem, model.stem, {"out": keep["stem"]})]
        for layer, compact, choice in zip(self.layers, model.layers, arch.layers):
            if choice.removed:
                continue
            hidden = layer.hidden_groups[layer.names.index(choice.op)]
            plan.append((layer.mixed.candidates[choice.op], compact.op,
                         {"in": keep[layer.in_group], "out": keep[layer.out_group],
                          "hidden": keep[hidden] if hidden else None}))
        plan.append((self.head, model.head, {"in": keep[self.final_group]}))
        return plan

    @torch.no_grad()
    def describe(self) -> str:
        """The current architecture as a markdown table: the likeliest op per layer and the
        channels whose gate is at least one half."""
        weights = self.op_weights()
        kept = {name: int(mask.kept().sum()) for name, mask in self.masks.items()}
        rows = ["| layer | op | p(op) | channels | hidden |", "|---|---|---|---|---|",
                f"| stem | conv_3x3 | 1.00 | {kept['stem']}/{self.masks['stem'].channels} | |"]
        for layer in self.layers:
            i = int(weights[layer.name].argmax())
            hidden = layer.hidden_groups[i]
            rows.append(f"| {layer.name} | {layer.names[i]} | {float(weights[layer.name][i]):.2f} | "
                        f"{kept[layer.out_group]}/{layer.c_out} | "
                        f"{f'{kept[hidden]}/{self.masks[hidden].channels}' if hidden else ''} |")
        return "\n".join(rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates, weights = self.gates(), self.op_weights()
        x = apply_gate(self.stem(x), gates["stem"])
        for layer in self.layers:
            x = layer(x, weights[layer.name], gates)
        return self.head(x)
