"""A latency table: per part, milliseconds on a grid of channel counts, and its interpolation.

The grid of a part is the product of one list of widths per channel group it depends on. Between
grid points the table is interpolated multilinearly, which reproduces every grid point exactly,
is monotone wherever the grid values are, and is differentiable in the (soft) widths, so the
search's penalty can pull on mask gates through it. Widths outside the grid are clamped to it.

A table records what it was measured for (`meta`: the space's parts, device, runtime, batch,
threads, memory format, torch version); `check` refuses one measured for anything else, naming
what differs.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from maskednas.common import atomic_write

FORMAT = "dnas-latency-table/1"
# what must match for a table to be reused, in the order a mismatch is reported
IDENTITY = ("space", "parts", "device", "runtime", "batch", "threads", "channels_last", "torch",
            "grid_step")


class LatencyTableError(ValueError):
    pass


def grid_widths(size: int, points: int, step: int = 1) -> list[int]:
    """`points` widths from 1 to `size`, evenly spaced (fewer when `size` is small); with a
    `step`, the inner ones rounded to its multiples (a runtime's fast widths) and the first one
    the step itself where `size` allows."""
    if points < 2:
        raise ValueError(f"a latency grid needs at least 2 points per axis, got {points}")
    if step > 1 and size > step:
        low = step
        inner = {min(size, max(step, step * round((low + (size - low) * i / (points - 1)) / step)))
                 for i in range(points)}
        return sorted(inner | {low, size})
    return sorted({round(1 + (size - 1) * i / (points - 1)) for i in range(points)})


def parts_digest(signatures: list) -> str:
    return hashlib.sha256(json.dumps(signatures).encode()).hexdigest()[:16]


@dataclass
class TableEntry:
    grid: list[list[int]]  # per axis, ascending widths
    ms: list  # nested lists, one level per axis: milliseconds at the grid points

    def values(self) -> torch.Tensor:
        return torch.tensor(self.ms, dtype=torch.float64)


@dataclass
class LatencyTable:
    meta: dict
    entries: dict[str, TableEntry] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False)

    # -- interpolation --------------------------------------------------------------------------
    def _tensors(self, key: str, device) -> tuple[list[torch.Tensor], torch.Tensor]:
        if (key, device) not in self._cache:
            e = self.entries[key]
            self._cache[key, device] = ([torch.tensor(g, dtype=torch.float64, device=device)
                                         for g in e.grid], e.values().to(device))
        return self._cache[key, device]

    def ms(self, key: str, widths) -> torch.Tensor:
        """Interpolated milliseconds of part `key` at `widths` (ints, floats or 0-d tensors,
        one per axis; differentiable in tensors). No value is read back to the host."""
        device = next((w.device for w in widths if torch.is_tensor(w)), torch.device("cpu"))
        grids, values = self._tensors(key, device)
        out = values
        # contract one axis at a time: out[i, ...] -> (1 - t) out[k-1, ...] + t out[k, ...]
        for axis, (grid, w) in enumerate(zip(grids, widths)):
            bounds = self.entries[key].grid[axis]
            w = torch.as_tensor(w, dtype=torch.float64, device=device)
            if len(bounds) == 1:  # one width (a layer reading the image's one channel)
                out = out[0] + 0 * w
                continue
            # the value clamped to the grid, the gradient straight through: at the grid's ends
            # (every group of a fresh supernet is at its full width) the slope of the end segment
            w = w + (w.clamp(bounds[0], bounds[-1]) - w).detach()
            k = torch.searchsorted(grid, w.detach().reshape(1)).clamp(1, len(grid) - 1)
            lo, hi = grid[k - 1], grid[k]
            t = ((w - lo) / (hi - lo)).reshape(())
            out = (1 - t) * out.index_select(0, k - 1)[0] + t * out.index_select(0, k)[0]
        return out

    # -- identity -------------------------------------------------------------------------------
    def check(self, expected: dict, source: str) -> None:
        """Refuse a table measured for something else than `expected` (a meta dict)."""
        for what in IDENTITY:
            default = 1 if what == "grid_step" else None  # tables saved before grids had steps
            have, want = self.meta.get(what, default), expected.get(what, default)
            if have != want:
                if what == "parts":
                    have, want = f"parts {have}", f"parts {want} (another space config or data shape)"
                raise LatencyTableError(
                    f"the latency table {source} was measured for {what} {have!r}, this run needs "
                    f"{what} {want!r}; build one for this run (maskednas latency --config ...) "
                    f"or leave latency.table unset to measure it")

    # -- files ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        content = {"meta": self.meta,
                   "entries": {k: {"grid": e.grid, "ms": e.ms} for k, e in self.entries.items()}}
        return {"format": FORMAT, **content, "sha256": content_digest(content)}

    def save(self, path: str | Path) -> None:
        text = json.dumps(self.to_dict(), indent=1)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    @classmethod
    def load(cls, path: str | Path, require_digest: bool = False) -> "LatencyTable":
        """The table in `path`, its content checked against its sha256 (a table written by
        hand may have none, unless `require_digest`: the cache's tables always do) and every
        entry's values against its grid."""
        path = Path(path)
        if not path.is_file():
            raise LatencyTableError(f"latency table {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise LatencyTableError(f"{path} is not a latency table of this project (format "
                                        f"{data.get('format')!r}, expected {FORMAT!r})")
            content = {"meta": data["meta"], "entries": data["entries"]}
            if require_digest and "sha256" not in data:
                raise LatencyTableError(f"{path} has no sha256 of its content (it was not saved "
                                        f"by this version), so it cannot be checked")
            if "sha256" in data and data["sha256"] != content_digest(content):
                raise LatencyTableError(f"{path} is corrupted: its content does not match the sha256 "
                                        f"it was saved with")
            entries = {k: TableEntry(e["grid"], e["ms"]) for k, e in data["entries"].items()}
            for key, entry in entries.items():
                check_entry(entry, f"{path}: part {key!r}")
            return cls(data["meta"], entries)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError,
                ValueError) as e:
            if isinstance(e, LatencyTableError):
                raise
            raise LatencyTableError(f"{path} is not a readable latency table: {e}") from e


def content_digest(content: dict) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def check_entry(entry: TableEntry, where: str) -> None:
    """Values of the grid's shape, finite and positive; grids ascending."""
    shape = tuple(len(g) for g in entry.grid)
    if any(list(g) != sorted(set(g)) or not g for g in entry.grid):
        raise LatencyTableError(f"{where}: every grid axis must list ascending widths")
    values = entry.values()
    if tuple(values.shape) != shape:
        raise LatencyTableError(f"{where}: {tuple(values.shape)} values for a grid of {shape}")
    if not (torch.isfinite(values).all() and (values > 0).all()):
        raise LatencyTableError(f"{where}: milliseconds must be finite and positive")


def monotone(values: torch.Tensor) -> torch.Tensor:
    """The smallest grid at least `values` that does not decrease along any axis: a wider layer
    is never predicted faster (a measured dip is timing noise the search must not exploit).
    A running maximum along each axis in turn keeps the earlier axes monotone."""
    for axis in range(values.dim()):
        values = values.cummax(dim=axis).values
    return values
