"""The cost-target protocol and its registry (see the package docstring)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from maskednas.common import Registry

COST_TARGETS = Registry("cost target")


class TargetError(ValueError):
    """A target outside what the space can reach, or one the space cannot have."""


class CostTarget:
    """One figure of a network, bound to a supernet (and the run's resources, e.g. its latency
    table). Subclasses set the class attributes and implement `value` and `of`.

    >>> from maskednas import COST_TARGETS, CostTarget
    >>> from maskednas.supernet import MacroSpaceConfig, MacroSupernet, StageSpec
    >>> net = MacroSupernet(MacroSpaceConfig(stem_channels=4, stages=[StageSpec(8, 2, 2)],
    ...                     candidates=["conv_3x3", "zero"], first_candidates=["conv_3x3"]), 1, 10, 8)
    >>> macs = COST_TARGETS.get("macs")(net)
    >>> isinstance(macs, CostTarget), macs.dense() == macs.of(net.dense_architecture())
    (True, True)
    >>> macs.show(macs.dense())  # stem 2,816 + conv 4->8 4,864 + conv 8->8 9,472 + head 208
    '17,360 MACs'

    `value(weights, widths)` is differentiable in the op weights and channel widths (the penalty
    reads it at the estimator's point); `of(arch)` is the exact figure of a derived record (what
    derivation and the target hold bisect on; it must grow with every width)."""
    name: ClassVar[str] = "?"  # set by `register_cost_target`
    label: ClassVar[str] = "?"  # how messages name it ("MACs", "latency")
    unit: ClassVar[str] = ""
    priority: ClassVar[int] = 0  # derivation meets the run's target of the highest priority
    needs_latency_table: ClassVar[bool] = False

    def __init__(self, net, latency=None, batch: int = 1) -> None:
        self.net, self.latency, self.batch = net, latency, batch

    @classmethod
    def unavailable(cls, space: type) -> str | None:
        """Why a space (its class) cannot have this target, as a predicate of the space ("has no
        latency model"); None when it can."""
        return None

    def value(self, weights: Mapping[str, torch.Tensor], widths: Mapping) -> torch.Tensor:
        raise NotImplementedError

    def of(self, arch) -> float:
        raise NotImplementedError

    def op_scores(self, widths: Mapping) -> dict[str, torch.Tensor]:
        """Every candidate's share of the figure at these widths, in the layout of the op weights
        (what `promote_ops` tilts choices by, and what finds the cheapest network)."""
        return self.net.op_scores(widths)

    def dense(self) -> float:
        """The dense network's figure (the reference of fractions)."""
        return float(self.of(self.net.dense_architecture()))

    def smallest(self, min_channels: int = 1) -> float:
        """The cheapest reachable network's figure: every group at `min_channels`, every choice
        its cheapest op at those widths."""
        widths = self.net.smallest_widths(min_channels)
        scores = {k: -v for k, v in self.op_scores(widths).items()}
        return float(self.of(self.net.architecture(self.net.derive_ops(scores), widths)))

    @classmethod
    def show(cls, value: float) -> str:
        """How a figure of this target is written in messages and summaries."""
        return f"{value:,.0f} {cls.unit}".rstrip()

    def where(self) -> str:
        """Where the figure holds (latency: the device and runtime), for messages."""
        return ""

    def check(self, value: float, min_channels: int = 1) -> None:
        """Refuse a target outside [smallest, dense], naming both."""
        low, high = self.smallest(min_channels), self.dense()
        if value < low:
            raise TargetError(
                f"the {self.label} target {self.show(value)} is below the smallest network this "
                f"search space can reach{self.where()} ({self.show(low)} with every layer at its "
                f"cheapest op and {min_channels} channel(s) per group); the dense network has "
                f"{self.show(high)}")
        if value > high:
            raise TargetError(
                f"the {self.label} target {self.show(value)} is above the dense network of this "
                f"search space{self.where()} ({self.show(high)}: every group at full width, every "
                f"layer its costliest op); targets must be in [{self.show(low)}, {self.show(high)}]")


def register_cost_target(cls: type[CostTarget]) -> type[CostTarget]:
    """Class decorator: make `cls` selectable as `search.targets.<cls.name>` in configs loaded
    after it is registered (in Python: the command imports no user code).

    >>> from maskednas import CostTarget, register_cost_target, COST_TARGETS
    >>> @register_cost_target
    ... class Weights(CostTarget):  # bytes of float32 weights: 4 per parameter
    ...     name, label, unit = "weight_bytes", "weight memory", "bytes"
    ...     def value(self, weights, widths):
    ...         return 4 * self.net.cost(weights, widths).params
    ...     def of(self, arch):
    ...         return 4 * arch.cost().params
    >>> COST_TARGETS.get("weight_bytes") is Weights
    True
    >>> del COST_TARGETS._obj_map["weight_bytes"]  # (keep the doctest's registry clean)
    """
    if not isinstance(getattr(cls, "name", None), str) or cls.name == "?":
        raise TypeError(f"{cls.__name__} needs a class attribute `name` (its config key)")
    return COST_TARGETS.add(cls.name, cls)


def resolve_targets(goals: Mapping, net, min_channels: int = 1, latency=None,
                    batch: int = 1) -> dict[str, float]:
    """Absolute values of the configured targets (name -> a goal with a `value`, or a `fraction`
    of the dense network's figure: `{"value": V}`, `{"fraction": F}` or an object with both
    attributes), in registration order. Fails before any training when a target is outside
    what the space can reach."""
    out = {}
    for name in COST_TARGETS.names():
        goal = goals.get(name)
        if not goal:
            continue
        goal = goal if isinstance(goal, Mapping) else vars(goal)
        target = COST_TARGETS.get(name)(net, latency, batch)
        value = goal["value"] if goal.get("value") is not None else goal["fraction"] * target.dense()
        target.check(value, min_channels)
        out[name] = float(value)
    return out
