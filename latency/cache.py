"""Finding the latency table of a run: its own copy, a table the user names, a cached one, or a
new measurement (then cached for every later run of the same space, device, runtime and batch)."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch

from maskednas.latency.calibrate import calibrate
from maskednas.latency.measure import measure_table, table_meta
from maskednas.latency.model import LatencyModel
from maskednas.latency.table import IDENTITY, LatencyTable, LatencyTableError

RUN_COPY = "latency_table.json"
_MEASURED: dict[Path, LatencyTable] = {}  # measured in this process, not yet in the cache


def cache_name(meta: dict, grid_points: int, grid_step: int = 1) -> str:
    """One file per space config, device, runtime, batch, threads, memory format, torch version
    and grid: every field `LatencyTable.check` compares, so tables measured for other settings
    never share a file (and a file that fails the check is unreadable or foreign: replaced)."""
    plain = lambda text: "".join(c if c.isalnum() or c == "." else "-" for c in str(text)).strip("-")
    layout = "cl" if meta["channels_last"] else "nchw"
    identity = hashlib.sha256(json.dumps([meta.get(k) for k in IDENTITY]).encode()).hexdigest()[:12]
    step = f"s{grid_step}-" if grid_step > 1 else ""
    return (f"{meta['space']}-{meta['runtime']}-b{meta['batch']}-t{meta['threads']}-{layout}-"
            f"g{grid_points}-{step}{plain(meta['device'])[:32]}-{identity}.json")


def obtain_table(net, device: torch.device, runtime: str, batch: int, channels_last: bool,
                 grid_points: int, repeats: int, rounds: int, cache_dir: Path, explicit: str | None = None,
                 run_dir: Path | None = None, report: Callable[[str], None] = print,
                 write_cache: bool = True, grid_step: int = 1) -> LatencyModel:
    """The latency model of `net` on `device`/`runtime` at `batch`. A table found anywhere must
    have been measured for exactly this (see `LatencyTable.check`): the run's copy or a named
    table that was not is refused; a cached one that was not is measured again. Without
    `write_cache` (the checks before a run writes anything) a new measurement is only kept in
    memory, for the run's later call to write."""
    parts = net.latency_parts()
    if parts is None:
        raise LatencyTableError(f"the {net.space_name} space has no latency model; latency "
                                f"targets are supported by spaces that list latency parts (macro)")
    expected = table_meta(net.space_name, parts, device, runtime, batch, channels_last, grid_step)
    own = run_dir / RUN_COPY if run_dir is not None else None
    source = own if own is not None and own.is_file() else Path(explicit) if explicit else None
    if source is not None:
        table = LatencyTable.load(source)
        table.check(expected, str(source))
        return LatencyModel(net, parts, table)
    cached = cache_dir / cache_name(expected, grid_points, grid_step)
    table = _MEASURED.pop(cached, None) if write_cache else _MEASURED.get(cached)
    reused = False
    if table is None and cached.is_file():
        try:
            table = LatencyTable.load(cached, require_digest=True)
            table.check(expected, str(cached))
            report(f"latency table: reusing {cached}")
            reused = True
        except LatencyTableError as e:
            report(f"latency table: {e}; measuring again")
            table = None
    if table is None:
        report(f"latency table: measuring {len(parts)} parts on {expected['device']} ({runtime}, "
               f"batch {batch}, {grid_points} widths per channel group)")
        table = measure_table(net.space_name, parts, device, runtime, batch, channels_last,
                              grid_points, repeats, rounds=rounds, grid_step=grid_step)
        calibrate(table, net, parts, device, runtime, batch, channels_last)
        _MEASURED[cached] = table
    if write_cache and not reused:  # a new measurement replaces an unreadable or foreign file
        table.save(cached)
        _MEASURED.pop(cached, None)
        report(f"latency table: saved {cached}")
    return LatencyModel(net, parts, table)


def save_run_copy(model: LatencyModel, run_dir: Path) -> None:
    """The table a run's targets and predictions come from, kept in the run (a resume reads it)."""
    if not (run_dir / RUN_COPY).is_file():
        model.table.save(run_dir / RUN_COPY)
