"""Gates for functional ops that mix channels, which no module hook reaches: `F.normalize` over
a pruned group's channels. Its input is multiplied by the gate, so a pruned channel adds nothing
to the norm, exactly as in the slimmed network where the channel is gone.

The n-th `F.normalize` of a forward pass is the n-th one the trace saw (a network's forward runs
the same ops in the same order; a forward that runs another number of them, or one of another
size where a gate applies, is an error); only those over a group's channels are gated.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from maskednas.supernet.channel_groups import ChannelSpace


class GatedNormalize(TorchFunctionMode):
    def __init__(self, spaces: list[tuple[ChannelSpace, int] | None],
                 gate_of: Callable[[ChannelSpace], torch.Tensor]) -> None:
        super().__init__()
        self.spaces, self.gate_of, self.calls = spaces, gate_of, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.normalize:
            gated = self.spaces[self.calls] if self.calls < len(self.spaces) else None
            self.calls += 1
            if gated is not None:
                x, (space, dim) = args[0], gated
                if x.shape[dim] != space.size:
                    raise RuntimeError(f"F.normalize call {self.calls} normalises {x.shape[dim]} "
                                       f"channels where the trace saw {space.size}: the network "
                                       f"runs other F.normalize calls in training than in eval")
                shape = [1] * x.ndim
                shape[dim] = -1
                args = (x * self.gate_of(space).view(shape).to(x.dtype), *args[1:])
        return func(*args, **kwargs)
