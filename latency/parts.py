"""What a latency table measures: the pieces a derived network is made of.

A space lists its `LatencyPart`s (`Supernet.latency_parts`): the stem, every candidate op of every
choice, the head. A part's latency depends on the widths of the channel groups it reads and writes
(its `groups`, up to three); the table holds it on a grid of those widths. The network's latency
is the sum of its parts': measured on the 2-core CPU, the parts of the digits and CIFAR-subset
networks sum to 90-98% of the whole network's time (benchmarks/latency_search.py reports the
prediction error of every exported model). A user's network is timed layer by layer and its sum
calibrated on whole networks (latency/layer_parts.py, latency/calibrate.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class LatencyPart:
    key: str  # its table entry, e.g. "s2l0/mbconv_k3_e3" (parts that time the same module share one)
    groups: tuple[str, ...]  # the channel groups whose widths it depends on (table axes)
    sizes: tuple[int, ...]  # those groups' full widths
    # the module at these widths (one per group) and its input shape without the batch
    build: Callable[[tuple[int, ...]], tuple[nn.Module, tuple[int, ...]]]
    # (choice, op index) whose op weight scales it; None: in every network (stem, head)
    choice: tuple[str, int] | None = None
    # its widths in a derived network's record, or None when that network does not have it
    locate: Callable[[object], tuple[int, ...] | None] = lambda arch: None
    # what else a table of this part depends on (a user's network: a digest of the whole of it,
    # which the table's calibration timed)
    context: str = ""

    def signature(self) -> list:
        """What identifies the part in a table (its module at full width is implied by it)."""
        module, shape = self.build(self.sizes)
        own = [self.key, list(self.groups), list(self.sizes), list(shape), type(module).__name__]
        return own + [self.context] if self.context else own
