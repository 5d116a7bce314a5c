"""Wall-clock latency of models, so the real speed-up stands next to the MACs ratio."""
from __future__ import annotations

import logging
import statistics
from collections.abc import Callable

import torch

# importing torch.utils.benchmark loads cpp_extension, which warns on machines without a CUDA
# toolkit although nothing here compiles; keep that line out of every run's output
_cpp_log = logging.getLogger("torch.utils.cpp_extension")
_level, _cpp_log.level = _cpp_log.level, logging.ERROR
from torch.utils.benchmark import Timer  # noqa: E402

_cpp_log.setLevel(_level)


def alternating_ms(runs: dict[str, Callable[[], object]], repeats: int = 50,
                   warmup: int = 10) -> dict[str, float]:
    """Median milliseconds of each zero-argument callable, timed by `torch.utils.benchmark.Timer`
    (CUDA synchronisation, the process's thread count) in alternation, one run each per round,
    so a machine that slows down or speeds up during the measurement (other processes,
    frequency scaling) biases none of them against the others."""
    timers = {name: Timer("run()", globals={"run": run}, num_threads=torch.get_num_threads())
              for name, run in runs.items()}
    for timer in timers.values():
        timer.timeit(warmup)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, timer in timers.items():
            times[name].append(timer.timeit(1).median * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


@torch.inference_mode()
def latencies_ms(models: dict[str, torch.nn.Module], shape: tuple[int, ...], repeats: int = 50,
                 warmup: int = 10, device: str | torch.device = "cpu",
                 inputs: torch.Tensor | None = None) -> dict[str, float]:
    """Median milliseconds per forward pass of a random batch of `shape` (or of `inputs`, such
    as token ids), for each model."""
    x = torch.randn(shape, device=device) if inputs is None else inputs.to(device)
    runs = {name: (lambda m=m.eval().to(device): m(x)) for name, m in models.items()}
    return alternating_ms(runs, repeats, warmup)
