"""Measuring latency tables and whole models on a device and runtime.

Runtimes: `torch` (eager, on the CPU or a CUDA device, in the run's memory format) and
`onnxruntime` (CPU; each module exported to ONNX in memory). Timing is `export.latency`'s: warm-up,
then the median of repeats taken in alternation over every grid point of one part, so a machine
that speeds up or slows down during the measurement biases no width against another.

Then the lowest of several such medians taken seconds apart (`rounds`): on a shared machine
(the 2-core CI VM) whole seconds run up to 2x slower, every kernel alike. Measured every 1.5 s
for 20 s, the median of 100 runs of the dense digits network ranged from 0.65 to 1.6 ms (and
even the minimum from 0.65 to 1.16 ms): a median taken in one window says which phase the
machine was in. The lowest over windows spread in time is the machine's uncontended speed, and
the table and the check of an exported model both estimate that.
"""
from __future__ import annotations

import contextlib
import copy
import io
import itertools
import platform
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from maskednas.export.latency import alternating_ms
from maskednas.latency.parts import LatencyPart
from maskednas.latency.table import LatencyTable, TableEntry, grid_widths, monotone, parts_digest

RUNTIMES = ("torch", "onnxruntime")
# `derive.round_to` of a run with a latency target that sets none, per runtime: measured by
# benchmarks/latency_models.py (docs/benchmarks.md, "Measured: latency targets on torchvision
# networks"): at the same predicted latency, widths rounded to 8 took 9-51% less time than unrounded
# ones; 16 and 32 took 1-11% less again per doubling but leave narrow groups nothing to prune.
ROUND_TO = {"torch": 8, "onnxruntime": 8}


def device_name(device: torch.device) -> str:
    """The processor the figures belong to: the CPU model, or the GPU's name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def table_meta(space: str, parts: list[LatencyPart], device: torch.device, runtime: str,
               batch: int, channels_last: bool, grid_step: int = 1) -> dict:
    """What a table is measured for (see latency.table.IDENTITY)."""
    return {"space": space, "parts": parts_digest([p.signature() for p in parts]), "grid_step": grid_step,
            "device": device_name(device), "runtime": runtime, "batch": batch,
            "threads": torch.get_num_threads() if device.type == "cpu" or runtime != "torch" else None,
            "channels_last": channels_last if runtime == "torch" else None,
            "torch": torch.__version__.split("+")[0]}


def runner(module: nn.Module, x: torch.Tensor, runtime: str) -> Callable[[], object]:
    """A zero-argument callable running `module` on `x` in `runtime`."""
    module = module.eval()
    if runtime == "torch":
        def run():
            with torch.inference_mode():
                return module(x)
        return run
    import onnxruntime

    buffer = io.BytesIO()  # the TorchScript exporter: ~30 ms a module (dynamo's takes ~1 s)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.cpu(), (x.cpu(),), buffer, input_names=["input"], dynamo=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # no busy-waiting after a run: sessions timed in alternation would spin on the cores the
    # next one runs on (measured: the same network 8.1 to 12.5 ms from one call to the next)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(buffer.getvalue(), options,
                                           providers=["CPUExecutionProvider"])
    feed = {"input": x.cpu().numpy().astype(np.float32)}
    return lambda: session.run(None, feed)


def example_input(shape: tuple[int, ...], batch: int, device: torch.device,
                  channels_last: bool) -> torch.Tensor:
    x = torch.randn(batch, *shape, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def prepare(module: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    module = module.eval().to(device)
    return module.to(memory_format=torch.channels_last) if channels_last else module


def measure_part(part: LatencyPart, grid: list[list[int]], device: torch.device, runtime: str,
                 batch: int, channels_last: bool, repeats: int, warmup: int) -> torch.Tensor:
    """Median milliseconds at every point of `grid`, shaped as the grid."""
    points = list(itertools.product(*grid))  # row-major: the order of the reshape below
    runs = {}
    for widths in points:
        module, shape = part.build(widths)
        x = example_input(shape, batch, device, channels_last)
        runs[widths] = runner(prepare(module, device, channels_last), x, runtime)
    ms = alternating_ms(runs, repeats, warmup)
    return torch.tensor([ms[w] for w in points], dtype=torch.float64).reshape(
        [len(g) for g in grid])


def measure_table(space: str, parts: list[LatencyPart], device: torch.device, runtime: str = "torch",
                  batch: int = 1, channels_last: bool = False, grid_points: int = 4,
                  repeats: int = 20, warmup: int = 5, rounds: int = 3, grid_step: int = 1) -> LatencyTable:
    """Every part at every point of its grid (`grid_points` widths per channel group, multiples
    of `grid_step` where it can: the widths derivation rounds to; parts sharing a key are
    measured once): per point the lowest of `rounds` medians, each round a pass over every part."""
    table = LatencyTable(table_meta(space, parts, device, runtime, batch, channels_last, grid_step))
    unique = {p.key: p for p in parts}
    grids = {k: [grid_widths(size, grid_points, grid_step) for size in p.sizes] for k, p in unique.items()}
    lowest: dict[str, torch.Tensor] = {}
    for _ in range(rounds):
        for key, part in unique.items():
            ms = measure_part(part, grids[key], device, runtime, batch, channels_last,
                              repeats, warmup)
            lowest[key] = torch.minimum(lowest.get(key, ms), ms)
    table.entries = {k: TableEntry(grids[k], monotone(v).tolist()) for k, v in lowest.items()}
    table.meta.update(grid_points=grid_points, repeats=repeats, rounds=rounds)
    return table


def models_ms(models: dict[str, nn.Module], input_shape: tuple[int, ...], device: torch.device,
              runtime: str, batch: int, channels_last: bool, repeats: int = 30, warmup: int = 5,
              rounds: int = 10, pause_s: float = 0.5) -> dict[str, float]:
    """Milliseconds of one forward pass of each whole model (copies of them, on `device`),
    timed as the table's parts are: the lowest of `rounds` alternating medians, `pause_s` apart."""
    x = example_input(input_shape, batch, device, channels_last)
    runs = {name: runner(prepare(copy.deepcopy(m), device, channels_last), x, runtime)
            for name, m in models.items()}
    lowest = {name: float("inf") for name in runs}
    for r in range(rounds):
        time.sleep(pause_s if r else 0.0)
        for name, ms in alternating_ms(runs, repeats, warmup).items():
            lowest[name] = min(lowest[name], ms)
    return lowest
