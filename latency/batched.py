"""Every part of a latency table interpolated at once: the parts' grids and values padded to one
shape, so a network's predicted latency is a few tensor ops per axis however many parts it has
(one interpolation per part dispatched thousands of tiny ops each step; benchmarks/cost_ops.py).

Padding repeats a grid's last width and value, and a part with fewer axes gets constant ones; the
result is `LatencyTable.ms` of every part, the same interpolation to float64 rounding.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from maskednas.latency.parts import LatencyPart
from maskednas.latency.table import LatencyTable
from maskednas.ops.cost_polynomial import WidthVector, stacked


class BatchedParts:
    def __init__(self, parts: list[LatencyPart], table: LatencyTable, groups: list[str],
                 choices: Mapping[str, int]) -> None:
        self.groups, self.names = list(groups), tuple(groups)
        offsets, at = {}, 1  # position 0 of the weight vector is a constant 1 (no choice)
        for name, n in choices.items():
            offsets[name], at = at, at + n
        self.choices = dict(choices)
        axes = max(len(p.groups) for p in parts)
        points = max(len(g) for p in parts for g in table.entries[p.key].grid)
        constant = len(self.groups)  # an extra width of 1, read by padded axes
        index, grids, values, scale = [], [], [], []
        for p in parts:
            entry = table.entries[p.key]
            index.append([self.groups.index(g) for g in p.groups] + [constant] * (axes - len(p.groups)))
            grid = [list(g) + [g[-1]] * (points - len(g)) for g in entry.grid]
            grids.append(grid + [[1] * points] * (axes - len(grid)))
            v = entry.values()
            for axis, g in enumerate(entry.grid):  # repeat the last value along each axis
                pad = v.narrow(axis, len(g) - 1, 1).expand(*v.shape[:axis], points - len(g), *v.shape[axis + 1:])
                v = torch.cat([v, pad], axis)
            values.append(v.reshape(v.shape + (1,) * (axes - v.dim())).expand((points,) * axes))
            scale.append(0 if p.choice is None else offsets[p.choice[0]] + p.choice[1])
        self._cpu = (torch.tensor(index), torch.tensor(grids, dtype=torch.float64),
                     torch.stack(values).contiguous(), torch.tensor(scale))
        self._on: dict[torch.device, tuple] = {}

    def ms(self, weights: Mapping[str, torch.Tensor], widths: Mapping) -> torch.Tensor:
        """Sum over parts of the interpolated ms times the op weight of its choice."""
        device = next((v.device for v in weights.values() if torch.is_tensor(v)), None) or next(
            (v.device for v in widths.values() if torch.is_tensor(v)), torch.device("cpu"))
        if device not in self._on:
            index, grids, values, scale = (t.to(device) for t in self._cpu)
            self._on[device] = (index, grids, values, scale,
                                [grids[:, a].contiguous() for a in range(grids.shape[1])])
        index, grids, values, scale, axis_grids = self._on[device]
        if isinstance(widths, WidthVector) and widths.names == self.names:
            w = widths.vector.to(torch.float64)
        else:
            w = stacked([widths[g] for g in self.groups], device)
        w = torch.cat([w, torch.ones(1, dtype=torch.float64, device=device)])[index]  # (parts, axes)
        # clamped to each grid, the gradient straight through (a fresh supernet sits at the ends)
        w = w + (torch.minimum(torch.maximum(w, grids[..., 0]), grids[..., -1]) - w).detach()
        parts = torch.arange(len(index), device=device)
        out = values
        for axis in range(index.shape[1]):
            grid, x = axis_grids[axis], w[:, axis:axis + 1].contiguous()
            k = torch.searchsorted(grid, x.detach()).clamp(1, grid.shape[1] - 1)
            lo, hi = grid.gather(1, k - 1), grid.gather(1, k)
            t = torch.where(hi > lo, (x - lo) / torch.where(hi > lo, hi - lo, 1.0), 0.0)
            t = t.reshape((-1,) + (1,) * (out.dim() - 2))
            out = (1 - t) * out[parts, k[:, 0] - 1] + t * out[parts, k[:, 0]]
        op_weights = torch.cat([torch.ones(1, dtype=torch.float64, device=device),
                                stacked([weights[k] for k in self.choices], device)])
        return (out * op_weights[scale]).sum()
