"""Counting the aten ops a piece of code dispatches: on a GPU each is at least one kernel launch,
so for steps made of many small kernels the count predicts the time better than the FLOPs."""
from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside it (forward, backward, optimizer), views excluded."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += not func.is_view
        return func(*args, **(kwargs or {}))
