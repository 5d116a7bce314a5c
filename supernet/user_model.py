"""The `model` space: a network the user already has (torchvision, timm or their own), pruned by
the same bilevel search as the built-in spaces.

Nothing in the user's code is edited. Channel groups come from Torch-Pruning's dependency graph
(`channel_groups`); each gets a `ChannelMask`, applied by forward hooks on the layers that *read*
the group (conv and linear inputs), so a channel whose gate is 0 contributes nothing anywhere,
as in the slimmed network; a LayerNorm over a group normalises with gate-weighted statistics,
which over 0/1 gates are exactly the statistics of the kept channels. Every residual block with
an identity shortcut gets a keep/skip choice (`y = x + w_keep * (block(x) - x)`): depth is
searched, as `zero` does in the macro space. The cost is exact in the project's convention
(checked against fvcore on the dense network when the space is built), and slimming is
Torch-Pruning's physical pruning of a copy of the network.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import warnings
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from maskednas.export.hf_models import is_language_model, token_example
from maskednas.export.model_source import build_source, check_source, load_checkpoint_into
from maskednas.export.pruned_model import (PrunedArchitecture, changed_layers, remove_blocks,
                                           zero_branches)
from maskednas.ops import ChannelMask, Cost
from maskednas.ops.attention_rules import branch_rule_for
from maskednas.ops.masks import WidthRounding
from maskednas.supernet.attention_heads import (HeadGroup, add_head_groups, leave_embedding_whole,
                                                leave_whole_what_breaks_other_attention, slim_heads)
from maskednas.supernet.base import Supernet, one_hot_max, register_space
from maskednas.ops.layer_rules import LayerRule, rule_for
from maskednas.ops.cost_polynomial import CostPolynomial, WidthVector, stacked
from maskednas.latency.layer_parts import layer_part, timed_alone
from maskednas.latency.parts import LatencyPart
from maskednas.latency.table import LatencyTableError
from maskednas.supernet.channel_groups import (ChannelGraphError, ChannelGroups, dependency_graph,
                                               discover, group_key, leave_whole, supported_types)
from maskednas.supernet.functional_gates import GatedNormalize
from maskednas.supernet.gate_index import GateIndex
from maskednas.supernet.model_trace import trace, within

OPS = ("keep", "skip")
MASK_INITS = ("constant", "magnitude")


@dataclass
class ModelSpaceConfig:
    source: str = "torchvision:resnet18"  # torchvision:<name> | timm:<name> | package.module:function
    checkpoint: str | None = None  # safetensors or a torch state dict (weights_only)
    pretrained: bool = False  # torchvision/timm weights (downloads: for users with a network)
    ignore: list[str] = field(default_factory=list)  # layers whose channels are never pruned
    depth: bool = True  # keep/skip choice per residual block with an identity shortcut
    mask_init: float = 3.0  # gate 0.95 at temperature 1: the trained network barely changes
    # constant: every mask logit starts at mask_init; magnitude: at mask_init + (importance - 1),
    # with Torch-Pruning's group magnitude importance (mean 1 per group), so that the search
    # starts from the network global magnitude pruning would keep at any budget
    mask_init_from: str = "constant"
    keep_init: float = 3.0  # initial keep-minus-skip logit of every block
    # a transformer's embedding width (the residual stream every block reads and writes: patch
    # embedding, norms, the classifier's input) is searched too; false leaves it whole
    embedding_width: bool = True
    # hf: sources: the architecture's config fields (hidden_size, num_hidden_layers, ...)
    hf_config: dict[str, int | float | str | bool | None] = field(default_factory=dict)

    @property
    def has_trained_weights(self) -> bool:
        """Whether the network before pruning is a trained one (a distillation teacher)."""
        return bool(self.checkpoint) or self.pretrained

    def validate(self) -> None:
        check_source(self.source)
        if self.mask_init_from not in MASK_INITS:
            raise ValueError(f"model.mask_init_from must be one of {', '.join(MASK_INITS)}, got "
                             f"{self.mask_init_from!r}")
        if not all(isinstance(n, str) and n for n in self.ignore):
            raise ValueError(f"model.ignore lists layer names (e.g. fc, layer4.1.conv2), got "
                             f"{self.ignore}")


class CostMismatchError(ValueError):
    pass


@dataclass(frozen=True)
class LayerWidths:
    name: str
    module: nn.Module
    rule: LayerRule
    c_in: object  # input channels at the widths asked for (int, float or tensor)
    c_out: object
    shape_in: tuple[int, ...]  # traced shapes of the dense network (batch 1)
    shape_out: tuple[int, ...]


@register_space("model", ModelSpaceConfig)
class UserModel(Supernet):
    def __init__(self, space: ModelSpaceConfig, in_channels: int, num_classes: int,
                 input_size: int) -> None:
        super().__init__(space, in_channels, num_classes, input_size)
        model = build_source(space.source, num_classes, in_channels, space.pretrained, space.hf_config)
        self.example = self.random_input(1, zeros=True)
        self.trace = trace(model, self.example, supported_types())
        modules = dict(model.named_modules())
        unknown = [n for n in space.ignore if n not in modules]
        if unknown:
            raise ValueError(f"model.ignore names {unknown}, which {space.source} does not have; "
                             f"its layers are e.g. {[n for n in modules if n][:8]}")
        if not self.trace.output_layers:
            raise ValueError(f"{space.source}: the network's output does not come from conv or "
                             f"linear layers (directly, or through pooling, flatten, activations, "
                             f"scaling and a sum of heads), so its classifier cannot be told apart")
        if self.trace.channel_reshapes:
            where, before, after, _ = self.trace.channel_reshapes[0]
            raise ChannelGraphError(
                f"{space.source}: {where or 'the network'} reshapes {list(before)} to {list(after)}, "
                f"splitting its channels over several dimensions or merging several into them (a "
                f"space-to-depth, a shuffle of another form than view, transpose(1, 2), view): "
                f"pruning cannot follow the channels through it, so this network cannot be "
                f"pruned here")
        if self.trace.unused:
            warnings.warn(f"{space.source}: the forward never runs "
                          f"{', '.join(f'{n} ({c:,} params)' for n, c in self.trace.unused.items())}: "
                          f"left out of the cost, kept as they are in the pruned network", stacklevel=2)
        if space.checkpoint:  # only the classifier (the layer the logits come from) may differ
            for name in load_checkpoint_into(model, space.checkpoint, self.trace.output_layers):
                warnings.warn(f"{space.checkpoint}: {name} has another class count; left fresh")
        try:
            self.groups: ChannelGroups = discover(model, self.example,
                                                  [modules[n] for n in self.trace.output_layers],
                                                  [modules[n] for n in space.ignore])
        except ChannelGraphError as e:
            raise ChannelGraphError(f"{space.source}: {e}") from e.__cause__
        self.heads: dict[str, HeadGroup] = add_head_groups(model, self.groups, set(space.ignore))
        if not space.embedding_width:
            leave_embedding_whole(self.groups, self.heads)
        leave_whole_what_breaks_other_attention(model, self.example, self.groups, self.heads,
                                                {p.inside for p in self.trace.products})
        self._leave_weightless_norms_whole(modules)
        if self.groups.skipped:
            whole = "; ".join(f"{root}: {why}" for root, why in sorted(self.groups.skipped.items()))
            warnings.warn(f"left unpruned (the channel group of each root layer named): {whole}",
                          stacklevel=2)
        self.teacher = [copy.deepcopy(model).eval()]  # the original network (a list: unregistered)
        self.model = model
        self.partitions = self._partitions(modules)  # group -> partition id of each channel
        for key, size in self.groups.sizes.items():
            self.masks[key] = ChannelMask(size, space.mask_init)
        if space.mask_init_from == "magnitude":
            self._init_masks_by_magnitude()
        # the depth choices: residual blocks, or each branch of a transformer block, with the
        # modules that run only for it (removed with it)
        self.blocks, self._branch_members = self._depth_choices(modules) if space.depth else ([], {})
        if not self.masks and not self.blocks:
            why = next((f"{root}: {why}" for root, why in self.groups.skipped.items()),
                       "every channel reaches the classifier's outputs or a layer in model.ignore")
            raise ChannelGraphError(f"{space.source}: nothing to prune: no channel group is pruned "
                                    f"({why}) and no residual block can be skipped")
        for name in self.blocks:
            self.alphas[group_key(name)] = nn.Parameter(torch.tensor([space.keep_init, 0.0]))
        self._block_of = {}  # layer -> the block it lies in (None: outside every block)
        self._restricted: dict[str, str] | None = None
        self._state: tuple | None = None  # this forward's gates, op weights and GateVectors
        # what the cost formulas read, gathered once (the penalty evaluates them every step)
        self._counted = [(name, modules[name], rule_for(modules[name]), shapes)
                         for name, shapes in self.trace.shapes.items()]
        owner = lambda param: param.rpartition(".")[0]
        # a layer with a rule that Torch-Pruning knows only by its parameter: that one's channels
        self._own_params = {owner(n): space for n, space in self.groups.params.items()
                            if rule_for(model.get_submodule(owner(n))) is not None}
        self._output_spaces = {**self._own_params, **self.groups.outputs}  # layer -> its output channels
        # loose parameters outside layers with a rule (a rule's cost counts its own parameters)
        self._loose = [(name, space, model.get_parameter(name).numel() // space.size)
                       for name, space in self.groups.params.items() if owner(name) not in self._own_params]
        self._fixed = [(name, p.numel()) for name, p in self._fixed_parameters()]
        self._hooks = self._attach(modules)
        # per traced F.normalize: the channel space and dimension to gate (None: not over a group)
        self._normalize_spaces = [
            (self.groups.outputs[n.producer], n.dim)
            if n.over_channels and n.producer in self.groups.outputs else None
            for n in self.trace.normalizations]
        self.gate_index = GateIndex(self.groups.sizes,
                                    [*self._gated, *(s for s, _ in filter(None, self._normalize_spaces))])
        self._check_cost(model)
        self._check_ties()

    @property
    def reads_tokens(self) -> bool:
        """Whether the network maps token ids (a language model, `input_size` of them) to logits
        over `num_classes` tokens, rather than images to class logits."""
        return is_language_model(self.space.source)

    def random_input(self, batch: int, generator: torch.Generator | None = None,
                     zeros: bool = False) -> torch.Tensor:
        """A batch the network reads: images (standard normal) or token ids (uniform)."""
        if self.reads_tokens:
            return token_example(self.input_size, batch, None if zeros else self.num_classes, generator)
        shape = (batch, self.in_channels, self.input_size, self.input_size)
        return torch.zeros(shape) if zeros else torch.randn(shape, generator=generator)

    @torch.no_grad()
    def _init_masks_by_magnitude(self) -> None:
        failed = [self.groups.roots[k][0] for k in self.masks if self.groups.importance.get(k) is None]
        if failed:
            raise ValueError(f"{self.space.source}: model.mask_init_from=magnitude, but Torch-"
                             f"Pruning's magnitude importance cannot score the channels of "
                             f"{failed[0]}'s group; use model.mask_init_from=constant")
        for key, mask in self.masks.items():
            mask.logits.add_(self.groups.importance[key].to(mask.logits) - 1)

    def _leave_weightless_norms_whole(self, modules: dict[str, nn.Module]) -> None:
        """A norm over channels with no weight of its own is no member of any channel group, so
        no gate would reach it: the groups of the channels it reads are left whole."""
        for name, producers in self.trace.weightless.items():
            rule = rule_for(modules[name])
            grouped = name in self.groups.inputs or name in self.groups.outputs
            if rule is None or rule.normalize is None or grouped:
                continue
            spaces = [self.groups.outputs.get(p) for p in producers] + [
                space for param, space in self.groups.params.items()
                if param.rpartition(".")[0] in producers]
            for group in {s.group for space in spaces if space is not None for s in space.slices}:
                leave_whole(self.groups, group, f"{name} normalises over these channels without a "
                                                f"weight of its own, which no channel gate reaches")

    # -- gating ------------------------------------------------------------------------------
    def _attach(self, modules: dict[str, nn.Module]) -> list:
        """Gates where the layer rules say a pruned channel must be kept out: the inputs of
        layers that mix channels, the statistics of norms over channels."""
        handles, self._gated = [], []
        for name, space in self.groups.inputs.items():
            rule = rule_for(modules[name])
            if rule is not None and rule.gated_forward is not None and space.slices:
                handles.append(modules[name].register_forward_hook(self._gated_forward(space, rule)))
                self._gated.append(space)
            elif rule is not None and rule.gate_input is not None and space.slices:
                handles.append(modules[name].register_forward_pre_hook(self._gate_input(space, rule)))
                self._gated.append(space)
        for name, space in self._output_spaces.items():
            rule = rule_for(modules[name])
            if rule is not None and rule.normalize is not None and space.slices:
                handles.append(modules[name].register_forward_hook(self._weighted_norm(space, rule)))
                self._gated.append(space)
        for name in self.blocks:
            hook = self._scale_branch(name) if name in self._branch_members else self._keep_or_skip(name)
            handles.append(modules[name].register_forward_hook(hook))
        return handles

    def _gate_input(self, space, rule: LayerRule):
        def hook(m, args):
            if self._state is None:  # the bare network (as fvcore and the teacher see it)
                return None
            return (rule.gate_input(m, args[0], self._state[2](space)), *args[1:])
        return hook

    def _gated_forward(self, space, rule: LayerRule):
        def hook(m, args, output):
            if self._state is None:
                return None
            return rule.gated_forward(m, args[0], self._state[2](space))
        return hook

    def _weighted_norm(self, space, rule: LayerRule):
        def hook(m, args, output):
            if self._state is None:
                return None
            return rule.normalize(m, args[0], self._state[2](space))
        return hook

    def _partitions(self, modules: dict[str, nn.Module]) -> dict[str, tuple[torch.Tensor, bool]]:
        """Per group read by a layer whose channel partitions pruning must respect: the
        partition (cell) of each group channel, and whether cells go whole (a grouped
        convolution's groups) or each keeps equally many channels (GroupNorm's groups). Where
        several layers partition one group, the cells are their common refinement (GroupNorm(8)
        and GroupNorm(4) over one stream: 8 cells). See `channel_step`, `keep_channels`."""
        out = {}
        for name, space in [*self.groups.inputs.items(), *self.groups.outputs.items()]:
            rule = rule_for(modules[name])
            parts = rule.partitions(modules[name]) if rule is not None else 1
            if parts == 1:
                continue
            for s in space.slices:
                ids, whole = s.index // (space.size // parts), rule.whole_partitions
                if s.group in out:  # refine: a cell per combination of partitions
                    before, was_whole = out[s.group]
                    if was_whole != whole:
                        raise ValueError(f"{name}: {self.groups.roots[s.group][0]}'s channel group runs "
                                         f"through a grouped convolution and a GroupNorm; list {name} "
                                         f"in model.ignore")
                    ids = torch.unique(before * parts + ids, return_inverse=True)[1]
                if len(set(torch.bincount(ids).tolist())) != 1:
                    raise ValueError(f"{name}: the channels of {self.groups.roots[s.group][0]}'s group "
                                     f"do not fall into equal groups; list {name} in model.ignore")
                out[s.group] = (ids, whole)
        return out

    def channel_step(self, group: str) -> int:
        """Kept counts are multiples of this: the number of cells (each keeps as many), or a
        cell's size (cells go whole)."""
        if group not in self.partitions:
            return 1
        ids, whole = self.partitions[group]
        cells = int(ids.max()) + 1
        return len(ids) // cells if whole else cells

    def channel_unit(self, group: str) -> int:
        return self.heads[group].unit if group in self.heads else 1

    def keep_channels(self, group: str, logits: torch.Tensor, count: int) -> torch.Tensor:
        """The highest logits; where the group has cells, the best of each cell alike, or the
        whole cells of the highest mean logit."""
        if group not in self.partitions:
            return super().keep_channels(group, logits, count)
        ids, whole = self.partitions[group]
        ids, cells = ids.to(logits.device), int(ids.max()) + 1
        members = [torch.nonzero(ids == c).flatten() for c in range(cells)]
        if whole:
            means = torch.stack([logits[m].mean() for m in members])
            kept = [members[c] for c in torch.topk(means, count // len(members[0])).indices.tolist()]
        else:
            kept = [m[torch.topk(logits[m], count // cells).indices] for m in members]
        return torch.sort(torch.cat(kept)).values

    def _depth_choices(self, modules: dict[str, nn.Module]) -> tuple[list[str], dict[str, tuple[str, ...]]]:
        """Each residual block, or each branch of a block a branch rule covers (with the
        modules that run only for it)."""
        choices, members = [], {}
        for block in self.trace.residual_blocks:
            rule = branch_rule_for(modules[block])
            if rule is None:
                choices.append(block)
                continue
            for branch, own in rule.branches.items():
                choices.append(f"{block}.{branch}")
                members[f"{block}.{branch}"] = tuple(f"{block}.{m}" for m in own if f"{block}.{m}" in modules)
        return choices, members

    def _scale_branch(self, name):
        """A branch the block adds to its stream, times its keep weight (zeros when skipped)."""
        key = group_key(name)

        def hook(m, args, output):
            if self._state is None:
                return None
            if self._restricted is not None:
                return output if self._restricted[name] == "keep" else torch.zeros_like(output)
            return self._state[1][key][0].to(output.dtype) * output
        return hook

    def _keep_or_skip(self, name):
        key = group_key(name)

        def hook(m, args, output):
            if self._state is None:
                return None
            x = args[0]
            if self._restricted is not None:
                return output if self._restricted[name] == "keep" else x
            return x + self._state[1][key][0].to(x.dtype) * (output - x)
        return hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.gates()
        self._state = (gates, self.op_weights(), self.gate_index.vectors(gates))
        try:
            if not any(self._normalize_spaces):
                return _logits(self.model(x), self)
            with GatedNormalize(self._normalize_spaces, self._state[2]) as gated:
                out = _logits(self.model(x), self)
            if gated.calls != len(self._normalize_spaces):
                raise RuntimeError(f"{self.space.source} called F.normalize {gated.calls} times in "
                                   f"this forward pass, {len(self._normalize_spaces)} when traced: its "
                                   f"channel gates cannot be matched; list the layers before them in "
                                   f"model.ignore")
            return out
        finally:
            self._state = None

    def distillation_teacher(self) -> nn.Module:
        """The network as it was before the search (the user's trained weights)."""
        return self.teacher[0].to(self.temperature.device)

    # -- op weights: keep/skip per block -------------------------------------------------------
    def op_weights(self, temperature=None) -> dict[str, torch.Tensor]:
        t = self.temperature if temperature is None else temperature
        if self._restricted is not None:
            return self.one_hot(self._restricted, dtype=self.temperature.dtype,
                                 device=self.temperature.device)
        return {key: torch.softmax(a / t, dim=0) for key, a in self.alphas.items()}

    def one_hot(self, ops, dtype=torch.float64, device=None) -> dict[str, torch.Tensor]:
        """Keep/skip weights of a derivation's `ops` (block -> "keep" | "skip"); float64 by
        default, so that counting MACs in the billions stays exact."""
        return {group_key(b): (torch.arange(2, device=device) == OPS.index(ops[b])).to(dtype)
                for b in self.blocks}

    def op_logits(self) -> dict[str, torch.Tensor]:
        if self._restricted is not None:
            return {k: w.double() for k, w in self.op_weights().items()}
        return super().op_logits()

    def select(self, scores):
        return {k: one_hot_max(w) for k, w in scores.items()}

    def derive_ops(self, scores=None) -> dict[str, str]:
        scores = self.op_logits() if scores is None else scores
        return {n: OPS[int(scores[group_key(n)].argmax())] for n in self.blocks}

    def restrict_ops(self, ops) -> None:
        self._restricted = None if ops is None else dict(ops)

    def used_groups(self, ops) -> list[str]:
        """The groups with a layer outside every removed block."""
        removed = lambda layer: (b := self._block(layer)) is not None and ops[b] == "skip"
        return [k for k, members in self.groups.members.items()
                if not all(removed(m) for m in members)]

    def choice_rows(self, weights):
        return {n: (OPS, weights[group_key(n)]) for n in self.blocks}

    @torch.no_grad()
    def describe(self) -> str:
        rows = ["| group (root layer) | channels |", "|---|---|"]
        rows += [f"| {self.groups.roots[k][0]} | {int(m.kept().sum())}/{m.channels} |"
                 for k, m in self.masks.items()]
        if self.blocks:
            ops = self.derive_ops()
            rows += ["", "| block | keep/skip |", "|---|---|"] + [f"| {n} | {ops[n]} |"
                                                                  for n in self.blocks]
        return "\n".join(rows)

    # -- cost ------------------------------------------------------------------------------------
    def layer_widths(self, widths) -> list[LayerWidths]:
        """Every counted layer (conv, linear, norm: those a layer rule covers) with its input
        and output widths at these group widths (ints, floats or tensors)."""
        g = self.groups
        width = lambda spaces, name, m, side: (spaces[name].width(widths) if name in spaces
                                               else rule.channels(m, side))
        out = []
        for name, m, rule, (shape_in, shape_out) in self._counted:
            c_out = width(self._output_spaces, name, m, "output")
            c_in = c_out if rule.same_channels else width(g.inputs, name, m, "input")
            out.append(LayerWidths(name, m, rule, c_in, c_out, shape_in, shape_out))
        return out

    def keep_weight(self, layer: str, weights):
        """The keep weight of the block `layer` lies in (1 outside every block)."""
        block = self._block(layer)
        return 1 if block is None else weights[group_key(block)][0]

    def _layer_costs(self, widths) -> list[tuple[str, Cost]]:
        """(layer, cost) of every counted layer and pooling at these group widths."""
        spaces = self._output_spaces
        width = lambda name, default: spaces[name].width(widths) if name in spaces else default
        out = [(w.name, self._per_head(w.name, w.rule.cost(w.module, w.c_in, w.c_out, w.shape_in,
                                                           w.shape_out), widths))
               for w in self.layer_widths(widths)]
        for pool in self.trace.pools:
            channels = sum(width(p, self.trace.shapes[p][1][1]) for p in pool.producers)
            out.append((pool.inside, Cost(channels * pool.size, 0)))
        out += [(p.inside, self._per_head(p.inside, Cost(p.macs, 0), widths))
                for p in self.trace.products]
        out += [(name, Cost(0, per_channel * space.width(widths)))
                for name, space, per_channel in self._loose]
        return out + [(name, Cost(0, numel)) for name, numel in self._fixed]

    def _fixed_parameters(self):
        """Parameters no counted layer's cost covers (loose parameters outside groups, e.g. a
        class token; the weight of a layer the forward reads without calling it): counted as
        they are."""
        counted = self.trace.shapes  # the layers whose rule counts their parameters
        covered = {f"{n}.{p}" for n, m in self.model.named_modules() if n in counted
                   for p, _ in m.named_parameters(recurse=False)} | set(self.groups.params)
        return [(n, p) for n, p in self.model.named_parameters()
                if n not in covered and n not in self.trace.unused_parameters]

    def _per_head(self, module: str, cost: Cost, widths) -> Cost:
        """`cost` of what `module` computes, run per head where it lies in an attention whose
        heads are a group (q @ k, a q/k norm; its projections' widths are counted as layers)."""
        head = next((h for h in self.heads.values() if within(module, h.attention)), None)
        if head is None or module in head.rows or module == head.reader:
            return cost
        return Cost(cost.macs * widths[head.key] / head.size, cost.params)

    def _block(self, layer: str) -> str | None:
        if layer not in self._block_of:
            self._block_of[layer] = next(
                (b for b in self.blocks
                 if any(within(layer, m) for m in (b, *self._branch_members.get(b, ())))), None)
        return self._block_of[layer]

    def cost(self, weights, widths) -> Cost:
        """Every layer's exact cost at these widths, times its block's keep weight:
        `cost_formula`, evaluated as the polynomial it is."""
        return self._cost_polynomial(weights, widths)

    @functools.cached_property
    def _cost_polynomial(self) -> CostPolynomial:
        return CostPolynomial(self.cost_formula, self.full_widths(), {group_key(b): 2 for b in self.blocks})

    def cost_formula(self, weights, widths) -> Cost:
        """The cost, layer by layer (`_layer_costs`), each times its block's keep weight."""
        total = Cost(0, 0)
        for layer, c in self._layer_costs({**self.full_widths(), **widths}):
            block = self._block(layer)
            total = total + (c if block is None else c * weights[group_key(block)][0])
        return total

    def op_scores(self, widths) -> dict[str, torch.Tensor]:
        """Per block: the MACs it costs when kept, and 0 when skipped."""
        macs = {b: 0.0 for b in self.blocks}
        for layer, c in self._layer_costs({**self.full_widths(), **widths}):
            block = self._block(layer)
            if block is not None:
                macs[block] += float(c.macs)
        return {group_key(b): torch.tensor([m, 0.0], dtype=torch.float64) for b, m in macs.items()}

    # -- latency -----------------------------------------------------------------------------------
    def latency_parts(self) -> list[LatencyPart]:
        """Every conv, linear and norm layer the forward runs, alone at its traced input shape
        and read at its own channel counts (latency/layer_parts.py), times its block's keep
        weight; the table's scale accounts for the rest of the network. Refused where heads are
        searched: attention's products are not parts, and their time scales with the heads."""
        if self.heads:
            raise LatencyTableError(
                f"{self.space.source}: latency tables do not time attention's products yet, whose "
                f"cost scales with the heads a search keeps; target MACs instead "
                f"(search.targets.macs)")
        return [part for part, _ in self._latency_layers]

    def latency_axes(self, widths) -> WidthVector:
        """The parts' channel counts at these group widths: one linear map of them."""
        names, matrix, offset = self._latency_map
        order = tuple(self.masks)
        if isinstance(widths, WidthVector) and widths.names == order:
            w = widths.vector.to(torch.float64)
        else:
            full = self.full_widths()
            device = next((v.device for v in widths.values() if torch.is_tensor(v)), torch.device("cpu"))
            w = stacked([widths.get(g, full[g]) for g in order], device)
        if w.device not in self._latency_on:
            self._latency_on[w.device] = (matrix.to(w.device), offset.to(w.device))
        matrix, offset = self._latency_on[w.device]
        return WidthVector(names, matrix @ w + offset)

    def latency_axis_names(self) -> list[str]:
        return list(self._latency_map[0])

    def latency_calibration(self, round_to: int = 1) -> dict[str, tuple[nn.Module, PrunedArchitecture]]:
        """The dense network and those with every group at a half and a quarter of its width
        (rounded as derivation rounds): the range latency targets fall in."""
        ops, full = {b: "keep" for b in self.blocks}, self.full_widths()
        rounding = WidthRounding(round_to, 1)
        out = {"dense": (self.teacher[0], self.architecture(ops, full))}
        for name, fraction in (("half", 2), ("quarter", 4)):
            widths = {g: rounding(max(1, round(size / fraction)), size, self.channel_step(g),
                                  self.channel_unit(g))
                      for g, size in full.items()}
            arch = self.architecture(ops, widths)
            small = self.slim(arch, {g: self.keep_channels(g, self.masks[g].logits.detach(), w)
                                     for g, w in widths.items()})
            out[name] = (small.eval(), arch)
        return out

    @functools.cached_property
    def _latency_layers(self) -> list[tuple[LatencyPart, LayerWidths]]:
        # the whole network goes into every part's signature: a table's calibration timed it
        network = hashlib.sha256(f"{self.teacher[0]!r}{list(self.example.shape)}".encode()).hexdigest()[:16]
        out = []
        for w in self.layer_widths(self.full_widths()):
            if timed_alone(w.module):
                block = self._block(w.name)
                choice = None if block is None else (group_key(block), 0)
                out.append((layer_part(w.name, w.module, w.shape_in, int(w.c_in), int(w.c_out),
                                       self._one_width(w), choice,
                                       functools.partial(self._located_widths, w.name, block),
                                       context=network), w))
        return out

    @staticmethod
    def _one_width(w: LayerWidths) -> bool:
        """Its input and output channels are one count (norms, depthwise convs; a grouped conv,
        which loses whole groups of both)."""
        return w.rule.same_channels or w.rule.whole_partitions

    @functools.cached_property
    def _latency_axes_of(self) -> dict[str, tuple[str, ...]]:
        return {w.name: part.groups for part, w in self._latency_layers}

    @functools.cached_property
    def _latency_map(self) -> tuple[tuple[str, ...], torch.Tensor, torch.Tensor]:
        """(axis names, A, b): the parts' channel counts are A @ group widths + b (every channel
        count is a sum of group widths and fixed channels)."""
        order = list(self.masks)
        self._latency_on = {}  # device -> (A, b) there
        basis = torch.eye(len(order), dtype=torch.float64)
        at_zero = {w.name: w for w in self.layer_widths({g: 0 for g in order})}
        per_group = {w.name: w for w in self.layer_widths({g: basis[i] for i, g in enumerate(order)})}
        names, rows, offsets = [], [], []
        for part, w in self._latency_layers:
            sides = ("c_out",) if self._one_width(w) else ("c_in", "c_out")
            for axis, side in zip(part.groups, sides):
                fixed = float(getattr(at_zero[w.name], side))
                row = torch.as_tensor(getattr(per_group[w.name], side), dtype=torch.float64)
                names.append(axis)
                rows.append((row - fixed).expand(len(order)))
                offsets.append(fixed)
        matrix = torch.stack(rows) if rows else torch.zeros(0, len(order), dtype=torch.float64)
        return tuple(names), matrix, torch.tensor(offsets, dtype=torch.float64)

    def _located_widths(self, layer: str, block: str | None, arch) -> tuple[int, ...] | None:
        """The layer's channel counts in the pruned network of `arch` (None: its block is gone)."""
        if block is not None and (block in arch.removed or block in arch.zeroed):
            return None
        cached = getattr(self, "_located", (None, None))
        if cached[0] is not arch:
            axes = self.latency_axes({k: float(v) for k, v in arch.widths.items()})
            cached = (arch, dict(zip(axes.names, axes.vector.round().long().tolist())))
            self._located = cached
        return tuple(cached[1][g] for g in self._latency_axes_of[layer])

    def _check_cost(self, model: nn.Module) -> None:
        from maskednas.export.flops import fvcore_report
        analytic = self.cost(self.one_hot({b: "keep" for b in self.blocks}), self.full_widths())
        flops, params, _ = fvcore_report(model, self.example)
        params -= sum(self.trace.unused.values())  # fvcore counts the modules that never run
        if (round(float(analytic.macs)), round(float(analytic.params))) != (flops, params):
            differing = self._layers_counted_differently(model)
            where = ("the layers whose counts differ (fvcore's MACs, params / the cost model's): "
                     + "; ".join(differing[:5]) if differing else
                     f"no layer's count differs, so the network computes with an op this tool "
                     f"does not model (fvcore's count by op: {_by_operator(model, self.example)}; "
                     f"modelled: {', '.join(t.__name__ for t in supported_types())}, adaptive "
                     f"average pooling and nearest or bilinear upsampling)")
            raise CostMismatchError(
                f"{self.space.source}: fvcore counts {flops:,} MACs and {params:,} params (in the "
                f"modules that run), the "
                f"cost model {float(analytic.macs):,.0f} and {float(analytic.params):,.0f}: {where}; "
                f"its cost would be wrong, so this network cannot be pruned here")

    def _check_ties(self) -> None:
        """A chunk or a shuffle prunes exactly only if its other size follows the width: a
        shuffle written `view(n, c // 2, 2, h, w)` keeps pieces of 2 and would mix the tied sets.
        One trace cannot tell which size the code fixes, so a copy slimmed by one step of every
        tied group must compute what the hard-masked network does, or the network is refused."""
        tied = [k for k in sorted(self.groups.tied) if self.groups.sizes[k] > self.channel_step(k)]
        if not tied:
            return
        keep = {k: torch.arange(n) for k, n in self.groups.sizes.items()}
        for k in tied:
            n = self.groups.sizes[k]
            keep[k] = self.keep_channels(k, -torch.arange(n, dtype=torch.float), n - self.channel_step(k))
        ops = {b: "keep" for b in self.blocks}
        arch = self.architecture(ops, {k: len(v) for k, v in keep.items()})
        x = self.random_input(2, torch.Generator().manual_seed(0))
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad(), self.hard_masked(ops, keep):
                reference = self(x)
            pruned = self.slim(arch, keep).eval()  # (its graph is traced with autograd on)
            with torch.no_grad():
                out = pruned(x)
            exact = out.shape == reference.shape and float((out - reference).abs().max()) <= (
                1e-4 * max(float(reference.abs().max()), 1.0))
        except RuntimeError:
            exact = False
        finally:
            self.train(was_training)
        if not exact:
            roots = [self.groups.roots[k][0] for k in tied]
            raise ChannelGraphError(
                f"{self.space.source}: the channels of {', '.join(roots)} are tied by a chunk or a "
                f"channel shuffle whose sizes the network's code fixes otherwise (a shuffle must "
                f"view its channels as (groups, channels // groups)): pruned, it computes "
                f"wrongly; list {roots[0]} in model.ignore to leave them whole")

    def _layers_counted_differently(self, model: nn.Module) -> list[str]:
        """'layer: fvcore MACs, params / ours' for every counted layer where they differ."""
        from fvcore.nn import parameter_count

        from maskednas.export.flops import flop_analysis
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flops = flop_analysis(model.eval(), self.example).by_module()
        params = parameter_count(model)
        full = self.full_widths()
        out = []
        for w in self.layer_widths(full):
            c = w.rule.cost(w.module, w.c_in, w.c_out, w.shape_in, w.shape_out)
            theirs = (flops.get(w.name, 0), params.get(w.name, 0))
            ours = (round(float(c.macs)), round(float(c.params)))
            if theirs != ours:
                out.append(f"{w.name} ({type(w.module).__name__}): {theirs[0]:,}, {theirs[1]:,} / "
                           f"{ours[0]:,}, {ours[1]:,}")
        return out

    # -- records and slimming ----------------------------------------------------------------------
    def architecture(self, ops, widths, mean=(), std=()) -> PrunedArchitecture:
        cost = self.cost(self.one_hot(ops), widths)
        return PrunedArchitecture(self.space.source, self.in_channels, self.input_size,
                                  self.num_classes, round(float(cost.macs)),
                                  round(float(cost.params)), {k: int(v) for k, v in widths.items()},
                                  tuple(m for b in self.blocks if ops[b] == "skip"
                                        for m in self._branch_members.get(b, (b,))),
                                  mean=tuple(mean), std=tuple(std),
                                  zeroed=tuple(b for b in self.blocks
                                               if ops[b] == "skip" and b in self._branch_members),
                                  hf_config=dict(self.space.hf_config))

    def copy_plan(self, model, arch, keep):
        raise NotImplementedError("a user's network is slimmed by pruning a copy (`slim`)")

    def slim(self, arch: PrunedArchitecture, keep) -> nn.Module:
        """A pruned copy of the network: Torch-Pruning removes every channel `keep` leaves out
        (weights, biases, norm statistics, loose parameters, in every layer of its group), and
        removed blocks become identities (`SkippedBlock`), removed branches zeros (`ZeroBranch`)."""
        pruned = copy.deepcopy(self.model).cpu().to(memory_format=torch.contiguous_format)
        ours = {h.id for h in self._hooks}
        for m in pruned.modules():  # the copy must not call back into this supernet
            for hooks in (m._forward_pre_hooks, m._forward_hooks):
                for hook_id in ours & hooks.keys():
                    del hooks[hook_id]
        with warnings.catch_warnings(), dependency_graph(pruned.eval(), self.example) as dg:
            warnings.simplefilter("ignore")
            grouped = {pruned.get_submodule(n) for n in self.groups.grouped_convs}
            # every group's channels found on the unpruned graph, then each layer pruned once: the
            # index mappings of splits, shuffles and concatenations hold the dense sizes throughout
            drops: dict = {}  # (node, handler) -> (a dependency of it, its positions to prune)
            for key, kept in keep.items():
                if key in self.heads:  # sliced below: Torch-Pruning's graph has no heads
                    continue
                drop = sorted(set(range(self.groups.sizes[key])) - set(kept.tolist()))
                for root, handler, channels in (self.groups.root_channels(key, drop) if drop else []):
                    layer = pruned.get_submodule(root)
                    group = dg.get_pruning_group(layer, getattr(dg.get_pruner_of_module(layer), handler.__name__),
                                                 channels)
                    for item in group.items:
                        # Torch-Pruning would slice a grouped convolution's inputs channel by
                        # channel: it loses whole groups below instead
                        if item.dep.target.module not in grouped:
                            at = drops.setdefault((item.dep.target, item.dep.handler), (item.dep, set()))
                            at[1].update(int(i) for i in item.idxs)
            for dep, positions in drops.values():
                _prune(pruned, dg, dep, sorted(positions))
        for name in self.groups.grouped_convs:
            self._keep_whole_groups(pruned.get_submodule(name), name, keep)
        for key, head in self.heads.items():
            if key in keep:
                slim_heads(pruned, head, keep[key])
        for m in pruned.modules():
            if (rule := rule_for(m)) is not None and rule.resized is not None:
                rule.resized(m)
        remove_blocks(pruned, arch.removed)
        zero_branches(pruned, arch.zeroed)
        pruned.arch = replace(arch, modules=changed_layers(self.teacher[0], pruned))
        return pruned.to(next(self.parameters()).device)


    def first_mismatch(self, compact: nn.Module, x: torch.Tensor, tolerance: float) -> str | None:
        """Compares every counted layer's output on its kept channels, in execution order."""
        ours, theirs, handles = {}, {}, []
        record = lambda store, name: lambda m, args, out: store.setdefault(name, out)
        pruned = dict(compact.named_modules())
        for name, m, _, _ in self._counted:
            handles.append(m.register_forward_hook(record(ours, name)))
            if name in pruned:
                handles.append(pruned[name].register_forward_hook(record(theirs, name)))
        try:
            self(x), compact(x)
        finally:
            for h in handles:
                h.remove()
        keep = {k: m.keep for k, m in self.masks.items()}
        for name, out in ours.items():
            if name not in theirs or not isinstance(out, torch.Tensor):
                continue
            mine, other = out, theirs[name]
            space = self._output_spaces.get(name)
            differs = [d for d in range(mine.ndim) if mine.shape[d] != other.shape[d]]
            if space is not None and len(differs) == 1:
                mine = mine.index_select(differs[0], space.kept_positions(keep).to(mine.device))
            if mine.shape == other.shape and float((mine - other).abs().max()) > tolerance * float(mine.abs().max()):
                return name
        return None

    def _keep_whole_groups(self, conv: nn.Conv2d, name: str, keep) -> None:
        """A grouped convolution with the kept groups' filters only (each reads its own inputs,
        so the input dimension keeps its per-group width)."""
        (s,) = self.groups.outputs[name].slices
        if s.group not in keep:
            return
        dense = self.model.get_submodule(name)
        positions = torch.sort(s.index[keep[s.group].cpu()]).values
        conv.weight = nn.Parameter(conv.weight.detach()[positions].clone())
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias.detach()[positions].clone())
        _slice_output_tensors(conv, lambda size: positions)
        conv.out_channels = len(positions)
        conv.groups = len(positions) // (dense.out_channels // dense.groups)
        conv.in_channels = conv.groups * (dense.in_channels // dense.groups)


def _prune(model: nn.Module, dg, dep, positions: list[int]) -> None:
    """Torch-Pruning's handler of `dep` on these positions; a loose parameter is replaced."""
    module = dep.target.module
    if isinstance(module, nn.Parameter):
        owner, _, attr = dg._param_to_name[module].rpartition(".")
        setattr(model.get_submodule(owner), attr, dep(positions))
        return
    # Torch-Pruning's GroupNorm pruner slices the bias of every affine one: timm's have none
    no_bias = isinstance(module, nn.GroupNorm) and module.weight is not None and module.bias is None
    if no_bias:
        module.bias = nn.Parameter(torch.zeros_like(module.weight))
    dep(positions)
    if no_bias:
        module.bias = None
    if dg.is_out_channel_pruning_fn(dep.handler):
        _slice_output_tensors(module, lambda size: sorted(set(range(size)) - set(positions)))


def _slice_output_tensors(module: nn.Module, kept) -> None:
    """The per-output-channel tensors its layer rule names that Torch-Pruning leaves whole (a
    weight-standardised conv's gain), cut to the output channels `kept(size)` lists."""
    rule = rule_for(module)
    for name in rule.output_tensors if rule is not None else ():
        tensor = getattr(module, name, None)
        if isinstance(tensor, nn.Parameter):
            setattr(module, name, nn.Parameter(tensor.detach()[kept(tensor.shape[0])].clone(),
                                               requires_grad=tensor.requires_grad))


def _logits(out, net: UserModel) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):  # e.g. auxiliary heads' logits in training mode
        raise TypeError(f"{net.space.source} returned a {type(out).__name__}, not a tensor of "
                        f"logits, in {'training' if net.model.training else 'eval'} mode; make it "
                        f"return only the logits (auxiliary heads: build it without them)")
    return out


def _by_operator(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    from maskednas.export.flops import flop_analysis
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dict(flop_analysis(model.eval(), example).by_operator())
