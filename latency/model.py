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
        self._batched: BatchedParts | None = None  # built on first use (it reads the op weights)

    def _part_ms(self, part: LatencyPart, widths: Mapping) -> torch.Tensor:
        return self.table.ms(part.key, [widths[g] for g in part.groups])

    def ms(self, weights: Mapping[str, torch.Tensor], widths: Mapping) -> torch.Tensor:
        """Expected milliseconds: every part at these widths (soft or whole), scaled by the op
        weight of its choice. Exact table latency at one-hot weights and integer widths."""
        if self._batched is None:
            self._batched = BatchedParts(self.parts, self.table, list(self.net.masks),
                                         {k: len(w) for k, w in self.net.op_weights().items()})
        return self._batched.ms(weights, widths)

    def ms_part_by_part(self, weights: Mapping[str, torch.Tensor], widths: Mapping) -> torch.Tensor:
        """`ms`, one table interpolation per part (the reference the batched one is tested on)."""
        terms = []
        for part in self.parts:
            ms = self._part_ms(part, widths)
            if part.choice is not None:
                name, i = part.choice
                ms = ms * weights[name][i].to(ms.dtype)
            terms.append(ms)
        return torch.stack(terms).sum()

    def architecture_ms(self, arch) -> float:
        """The table's latency of a derived network (its record, as `export.build` builds it)."""
        total = 0.0
        for part in self.parts:
            widths = part.locate(arch)
            if widths is not None:
                total += float(self.table.ms(part.key, list(widths)))
        return total

    def op_scores(self, widths: Mapping) -> dict[str, torch.Tensor]:
        """Every candidate's milliseconds at these widths, in the layout of the op weights (ops
        without a part, such as `zero`, cost 0): what `select` ranks for the fastest or slowest
        network, and what derivation tilts op choices by."""
        scores = {k: torch.zeros_like(w, dtype=torch.float64, device="cpu")
                  for k, w in self.net.op_weights().items()}
        for part in self.parts:
            if part.choice is not None:
                name, i = part.choice
                scores[name][i] = float(self._part_ms(part, widths))
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
