"""Gate vectors of a user network's channel spaces, gathered from one vector of every group's
gates.

A forward pass concatenates the groups' gates once (position 0 is a constant 1, for channels in
no group); each distinct channel space (many layers read the same residual stream) holds one
index buffer into that vector, on the model's device, and its gate vector is gathered once per
forward however many layers read it. No per-layer index copy from the host, no per-slice loop.
"""
from __future__ import annotations

import torch
from torch import nn

from maskednas.supernet.channel_groups import ChannelSpace


def _content(space: ChannelSpace) -> tuple:
    return space.size, tuple((s.group, tuple(s.index.tolist()), s.repeat) for s in space.slices)


class GateIndex(nn.Module):
    def __init__(self, sizes: dict[str, int], spaces: list[ChannelSpace]) -> None:
        super().__init__()
        self.groups = list(sizes)
        starts, at = {}, 1
        for group, size in sizes.items():
            starts[group], at = at, at + size
        seen: dict[tuple, str] = {}
        for space in spaces:
            key = _content(space)
            if key not in seen:
                positions = torch.zeros(space.size, dtype=torch.long)
                for s in space.slices:
                    positions[s.index] = starts[s.group] + torch.arange(len(s.index)) // s.repeat
                seen[key] = f"space{len(seen)}"
                self.register_buffer(seen[key], positions, persistent=False)
            space.gate_slot = seen[key]  # the buffer's name, on the space (a copy keeps it)

    def vectors(self, gates: dict[str, torch.Tensor]) -> "GateVectors":
        if not self.groups:  # nothing is gated
            return GateVectors(self, torch.ones(1))
        ref = gates[self.groups[0]]
        flat = torch.cat([torch.ones(1, dtype=ref.dtype, device=ref.device),
                          *(gates[g] for g in self.groups)])
        return GateVectors(self, flat)


class GateVectors:
    """One forward pass's gate vectors, gathered on first use."""

    def __init__(self, index: GateIndex, flat: torch.Tensor) -> None:
        self.index, self.flat, self._gathered = index, flat, {}

    def __call__(self, space: ChannelSpace) -> torch.Tensor:
        slot = space.gate_slot
        if slot not in self._gathered:
            self._gathered[slot] = self.flat[getattr(self.index, slot)]
        return self._gathered[slot]
