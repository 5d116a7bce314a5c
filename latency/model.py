"""The latency of a space's networks predicted from a table, as a function of op weights and
channel widths (differentiable: the search penalises it) and of a derived network's record."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from maskednas.latency.batched import BatchedParts
from maskednas.latency.parts import LatencyPart
from maskednas.latency.table import LatencyTable, LatencyTableError


class LatencyModel:
    def __init__(self, net, parts: list[LatencyPart], table: LatencyTable) -> None:
        missing = [p.key for p in parts if p.key not in table.entries]
        if missing:
            raise LatencyTableError(f"the latency table has no entry for {missing[0]} "
                                    f"({len(missing)} part(s) missing)")
        self.net, self.parts, self.table = net, parts, table
        self.meta = table.meta
        # whole network from the sum of its parts (latency/calibrate.py): through the calibration
        # points where the space has them, else `scale` times the sum (1 where the parts are all)
        self.scale = float(table.meta.get("scale", 1.0))
        points = torch.tensor(table.meta.get("calibration_points", []), dtype=torch.float64).reshape(-1, 2)
        self.points = points if len(points) >= 2 else None
        self._points_on: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # copied once per device
        self._batched: BatchedParts | None = None  # built on first use (it reads the op weights)

    def _calibrated(self, summed: torch.Tensor) -> torch.Tensor:
        """Milliseconds of a network whose parts sum to `summed` (latency/calibrate.py): linear
        between the calibration networks, their end segments extended beyond them, and never
        below the smallest one's ratio of whole to parts (an extended segment would reach 0 ms)."""
        if self.points is None:
            return summed * self.scale
        key = (summed.device, summed.dtype)
        if key not in self._points_on:
            self._points_on[key] = tuple(c.to(summed.device, summed.dtype) for c in self.points.unbind(1))
        x, y = self._points_on[key]
        i = torch.bucketize(summed.detach(), x[1:-1])  # the segment: one tensor op, no host sync
        line = y[i] + (y[i + 1] - y[i]) / (x[i + 1] - x[i]) * (summed - x[i])
        return torch.where(summed < x[0], torch.maximum(line, summed * (y[0] / x[0])), line)

    def _part_ms(self, part: LatencyPart, axes: Mapping) -> torch.Tensor:
        """Unscaled milliseconds of `part` at these table axes (`net.latency_axes`)."""
        return self.table.ms(part.key, [axes[g] for g in part.groups])

    def ms(self, weights: Mapping[str, torch.Tensor], widths: Mapping) -> torch.Tensor:
        """Expected milliseconds: every part at these widths (soft or whole), scaled by the op
        weight of its choice. Exact table latency at one-hot weights and integer widths."""
        if self._batched is None:
            self._batched = BatchedParts(self.parts, self.table, self.net.latency_axis_names(),
                                         {k: len(w) for k, w in self.net.op_weights().items()})
        return self._calibrated(self._batched.ms(weights, self.net.latency_axes(widths)))

    def ms_part_by_part(self, weights: Mapping[str, torch.Tensor], widths: Mapping) -> torch.Tensor:
        """`ms`, one table interpolation per part (the reference the batched one is tested on)."""
        terms, axes = [], self.net.latency_axes(widths)
        for part in self.parts:
            ms = self._part_ms(part, axes)
            if part.choice is not None:
                name, i = part.choice
                ms = ms * weights[name][i].to(ms.dtype)
            terms.append(ms)
        return self._calibrated(torch.stack(terms).sum())

    def architecture_ms(self, arch) -> float:
        """The table's latency of a derived network (its record, as `export.build` builds it)."""
        total = 0.0
        for part in self.parts:
            widths = part.locate(arch)
            if widths is not None:
                total += float(self.table.ms(part.key, list(widths)))
        return float(self._calibrated(torch.tensor(total, dtype=torch.float64)))

    def op_scores(self, widths: Mapping) -> dict[str, torch.Tensor]:
        """Every candidate's milliseconds at these widths, in the layout of the op weights (ops
        without a part, such as `zero`, cost 0): what `select` ranks for the fastest or slowest
        network, and what derivation tilts op choices by."""
        scores = {k: torch.zeros_like(w, dtype=torch.float64, device="cpu")
                  for k, w in self.net.op_weights().items()}
        axes = self.net.latency_axes(widths)
        for part in self.parts:  # a choice's op may be several parts (a block's layers)
            if part.choice is not None:
                name, i = part.choice
                scores[name][i] += float(self._part_ms(part, axes)) * self.scale
        return scores

    def dense_ms(self) -> float:
        """The table's latency of the dense network (the reference of latency fractions)."""
        return self.architecture_ms(self.net.dense_architecture())

    def fastest_ms(self, min_channels: int = 1) -> float:
        """The fastest reachable network: every group at `min_channels`, every choice its
        fastest op at those widths."""
        widths = self.net.smallest_widths(min_channels)
        scores = {k: -v for k, v in self.op_scores(widths).items()}
        return self.architecture_ms(self.net.architecture(self.net.derive_ops(scores), widths))
