"""The search-space protocol: what every space gives the search loop, the cost model, the
discretizer and the slimmer. Nothing outside `supernet/` asks a space for its name or reads its
internals; it calls these methods.

A space owns its op logits (`alphas`), its channel masks (`masks`, one per channel group) and one
temperature shared by the alpha softmax and the mask sigmoids. Op weights are kept in the space's
own layout (a vector per macro layer, an edges x ops matrix per DARTS cell type), as a dict of
tensors. A derivation is the space's `Ops` (plain data: which op each choice took) plus the kept
channel indices of every group it uses.

To add a space: subclass `Supernet`, implement the abstract methods, and decorate the class with
`@register_space("name", ConfigDataclass)`; its config section in YAML is then `name:`
(tests/test_space_protocol.py defines one). The registry of spaces:

    >>> from maskednas import SPACES
    >>> sorted(SPACES.names())
    ['darts', 'macro', 'model']
    >>> SPACES.get("macro").__name__
    'MacroSupernet'
"""
from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from maskednas.export.architecture import Architecture
from maskednas.ops import Cost, Registry

Ops = Any  # a derivation's ops as plain data (macro: {layer: op}; DARTS: the genotype)
OpWeights = dict[str, torch.Tensor]  # the space's op weights (probabilities or one-hot)
Widths = Mapping[str, Any]  # channel group -> width (int, float or 0-d tensor)
Index = torch.Tensor | None  # kept channel indices; None keeps every channel
CopyPlan = list[tuple[nn.Module, nn.Module, dict[str, Index]]]
Temperature = torch.Tensor | float | None  # None: the space's current (search) temperature

SPACES = Registry("search space")


def register_space(name: str, config_class: type):
    """Class decorator: make a space selectable as `space: name`, configured by the YAML section
    `name:` whose keys are the fields of `config_class`.

    >>> from maskednas import SPACES, register_space
    >>> from maskednas.supernet import MacroSpaceConfig, MacroSupernet
    >>> @register_space("wide_macro", MacroSpaceConfig)  # the macro space under another name
    ... class WideMacro(MacroSupernet):
    ...     pass
    >>> SPACES.get("wide_macro").space_name
    'wide_macro'
    >>> del SPACES._obj_map["wide_macro"]  # (keep the doctest's registry clean)
    """
    def add(cls: type[Supernet]) -> type[Supernet]:
        cls.space_name, cls.config_class = name, config_class
        return SPACES.add(name, cls)
    return add


def one_hot_max(scores: torch.Tensor) -> torch.Tensor:
    """1 at the highest score, 0 elsewhere, in the scores' dtype (F.one_hot checks its indices
    on the host: a sync per call)."""
    return (torch.arange(len(scores), device=scores.device) == scores.argmax()).to(scores.dtype)


class Supernet(nn.Module, abc.ABC):
    """A weight-sharing supernet: weights, op logits (`alphas`), channel masks and the methods
    the search, the cost model, the discretizer and the slimmer call.

    >>> from maskednas import Supernet
    >>> from maskednas.supernet import MacroSpaceConfig, MacroSupernet, StageSpec
    >>> net = MacroSupernet(MacroSpaceConfig(stem_channels=4, stages=[StageSpec(8, 2, 2)],
    ...                     candidates=["conv_3x3", "zero"], first_candidates=["conv_3x3"]), 1, 10, 8)
    >>> isinstance(net, Supernet), sorted(net.full_widths().items())
    (True, [('s1', 8), ('stem', 4)])
    """
    space_name = "?"  # set by `register_space`; recorded in every Architecture
    config_class: type = object
    cell_based = False  # derived networks are cells with a genotype (DARTS' evaluation protocol)

    def __init__(self, space, in_channels: int, num_classes: int, input_size: int) -> None:
        super().__init__()
        space.validate()
        self.space, self.in_channels, self.num_classes = space, in_channels, num_classes
        self.input_size = input_size
        self.register_buffer("temperature", torch.tensor(1.0))
        self.masks = nn.ModuleDict()
        self.alphas = nn.ParameterDict()

    # -- parameters ---------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """Op logits (alpha) and mask logits: updated by the architecture step only."""
        return [*self.alphas.values(), *(m.logits for m in self.masks.values())]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    # -- schedules ------------------------------------------------------------------------------
    def set_temperature(self, value: float) -> None:
        self.temperature.fill_(value)

    def set_progress(self, fraction: float) -> None:
        """Fraction of the architecture search done, in [0, 1]; spaces with a schedule of their
        own (the DARTS space's decaying auxiliary skip) follow it."""

    # -- channel masks ----------------------------------------------------------------------------
    def gates(self, temperature: Temperature = None) -> dict[str, torch.Tensor]:
        """sigmoid(logit / temperature) per group (default: the search's temperature)."""
        t = self.temperature if temperature is None else temperature
        return {name: mask(t) for name, mask in self.masks.items()}

    def full_widths(self) -> dict[str, int]:
        return {name: mask.channels for name, mask in self.masks.items()}

    def keep_channels(self, group: str, logits: torch.Tensor, count: int) -> torch.Tensor:
        """Indices (ascending) of the `count` channels of `group` to keep: the highest logits."""
        return torch.sort(torch.topk(logits, count).indices).values

    def channel_step(self, group: str) -> int:
        """Kept counts of `group` are multiples of this (2 where an op splits it in halves)."""
        return 1

    def channel_unit(self, group: str) -> int:
        """The channels each member of `group` stands for (an attention head's; 1: a channel)."""
        return 1

    def smallest_widths(self, min_channels: int = 1) -> dict[str, int]:
        """Every group at `min_channels` (at least its step, at most its size)."""
        return {name: min(max(-(-min_channels // self.channel_unit(name)), self.channel_step(name)), c)
                for name, c in self.full_widths().items()}

    # -- op weights and derivation (abstract) ---------------------------------------------------
    @abc.abstractmethod
    def op_weights(self, temperature: Temperature = None) -> OpWeights:
        """softmax(alpha / temperature) per choice (default: the search's temperature), or
        one-hot on the ops `restrict_ops` set."""

    def op_logits(self) -> OpWeights:
        """What derivation ranks, free of the temperature: log-probabilities at temperature 1,
        in float64. (A float32 softmax at T = 0.01 saturates, and ranking its exact ties by index
        would change the derived network; a float32 log-softmax rounds alphas 1e-7 apart, as
        Adam's first step leaves them, to ties.) Spaces return their fixed one-hot weights while
        hard-masked."""
        return {k: torch.log_softmax(a.double(), dim=-1) for k, a in self.alphas.items()}

    @abc.abstractmethod
    def select(self, scores: OpWeights) -> OpWeights:
        """One-hot weights of the architecture a derivation gives from `scores` (op logits, op
        weights or op costs: larger is stronger). Must not read values back to the host: the
        penalty calls it in every architecture step."""

    @abc.abstractmethod
    def derive_ops(self, scores: OpWeights | None = None) -> Ops:
        """The derived ops as plain data (from `scores`, default `op_logits()`)."""

    @abc.abstractmethod
    def used_groups(self, ops: Ops) -> list[str]:
        """The channel groups the network of `ops` has (the others are not derived)."""

    @abc.abstractmethod
    def choice_rows(self, weights: OpWeights) -> dict[str, tuple[tuple[str, ...], torch.Tensor]]:
        """Per choice (for logging): its op names and their weights."""

    @abc.abstractmethod
    def describe(self) -> str:
        """The current architecture as a markdown table (TensorBoard text)."""

    def arch_stats(self) -> dict[str, float]:
        """Numbers about the current architecture worth logging every epoch."""
        return {}

    # -- cost (abstract) --------------------------------------------------------------------------
    @abc.abstractmethod
    def cost(self, weights: OpWeights, widths: Widths) -> Cost:
        """MACs and params: the expectation over every choice's op weights of each op's exact
        cost at these widths. Exact at one-hot weights and integer widths (fvcore's count of the
        compact model), differentiable in both."""

    @abc.abstractmethod
    def op_scores(self, widths: Widths) -> OpWeights:
        """Every candidate's MACs at these widths, in the layout of `op_weights`: `select` of
        these (or of their negatives) gives the most (least) expensive derivable network."""

    def latency_parts(self) -> list | None:
        """The `latency.LatencyPart`s a latency table measures (stem, every candidate op, head),
        or None for a space without a latency model (latency targets are refused for it)."""
        return None

    def latency_axes(self, widths: Widths) -> Widths:
        """The widths the latency parts' tables are read at (their `groups`), from the group
        widths: the groups themselves, unless a space's parts depend on other counts."""
        return widths

    def latency_axis_names(self) -> list[str]:
        """The names `latency_axes` gives values for, in its order."""
        return list(self.masks)

    def latency_calibration(self, round_to: int = 1) -> dict[str, tuple[nn.Module, Architecture]]:
        """Networks of the space (module, its record) timed whole when a table is measured, for
        a space whose parts do not cover all of a network: the table's `calibration_points`
        make its prediction of them their measured time (latency/calibrate.py), their widths
        multiples of `round_to` where they can be; {}: none."""
        return {}

    def latency_input_shape(self) -> tuple[int, ...]:
        """The input of one example (channels, height, width): what whole networks are timed on."""
        return (self.in_channels, self.input_size, self.input_size)

    def single_path_weights(self, widths: Widths, largest: bool) -> OpWeights:
        scores = self.op_scores(widths)
        return self.select({k: v if largest else -v for k, v in scores.items()})

    # -- architecture records and slimming (abstract) -------------------------------------------
    @abc.abstractmethod
    def architecture(self, ops: Ops, widths: Mapping[str, int], mean=(), std=()) -> Architecture:
        """The `Architecture` record of `ops` at these kept widths (what `export.build` builds)."""

    def dense_architecture(self, mean=(), std=()) -> Architecture:
        """The widest single path: every group at full width, every choice its most expensive
        op. Fractional targets and speed-up figures refer to it."""
        widths = self.full_widths()
        return self.architecture(self.derive_ops(self.single_path_weights(widths, largest=True)),
                                 widths, mean, std)

    def slim(self, arch, keep: Mapping[str, torch.Tensor]) -> nn.Module | None:
        """The compact model of a derivation, for a space that slims its own way (a user's
        network is pruned in a copy); None: `derive.slim` builds `arch` and copies weights by
        `copy_plan`."""
        return None

    def first_mismatch(self, compact: nn.Module, x: torch.Tensor, tolerance: float) -> str | None:
        """Under hard masks: the first layer whose output in `compact` differs from its own by
        more than `tolerance` of its scale (None: the space cannot tell)."""
        return None

    def distillation_teacher(self) -> nn.Module:
        """What the fine-tune distils from (`finetune.kd_weight`): the soft supernet itself."""
        return self

    @abc.abstractmethod
    def copy_plan(self, model: nn.Module, arch: Architecture,
                  keep: Mapping[str, torch.Tensor]) -> CopyPlan:
        """(supernet module, compact module, role -> kept indices) for every part of the compact
        model `export.build(arch)` whose weights come from the supernet. Modules are matched by
        name inside each pair; roles are the `channel_roles` tags of `ops/`."""

    # -- hard masking ---------------------------------------------------------------------------
    @abc.abstractmethod
    def restrict_ops(self, ops: Ops | None) -> None:
        """Run only the ops of `ops` (their op weights one-hot); `None` runs every op again."""

    def hard_mask(self, ops: Ops, keep: Mapping[str, torch.Tensor]) -> None:
        """The hard-masked supernet of a derivation: only its ops run and only `keep` channels
        pass, so in eval mode it computes what the slimmed model computes."""
        self.restrict_ops(ops)
        for name, mask in self.masks.items():
            if name in keep:
                mask.harden(keep[name])

    def soft_mask(self) -> None:
        """Undo `hard_mask`: every op and every soft gate again."""
        self.restrict_ops(None)
        for mask in self.masks.values():
            mask.soften()

    @contextlib.contextmanager
    def hard_masked(self, ops: Ops, keep: Mapping[str, torch.Tensor]) -> Iterator[Supernet]:
        self.hard_mask(ops, keep)
        try:
            yield self
        finally:
            self.soft_mask()
