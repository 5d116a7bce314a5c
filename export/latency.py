"""Wall-clock latency of models, so the real speed-up stands next to the MACs ratio."""
from __future__ import annotations

import logging
import statistics

import torch

# importing torch.utils.benchmark loads cpp_extension, which warns on machines without a CUDA
# toolkit although nothing here compiles; keep that line out of every run's output
_cpp_log = logging.getLogger("torch.utils.cpp_extension")
_level, _cpp_log.level = _cpp_log.level, logging.ERROR
from torch.utils.benchmark import Timer  # noqa: E402

_cpp_log.setLevel(_level)


@torch.inference_mode()
def latencies_ms(models: dict[str, torch.nn.Module], shape: tuple[int, ...], repeats: int = 50,
                 warmup: int = 10, device: str | torch.device = "cpu") -> dict[str, float]:
    """Median milliseconds per forward pass of a random batch of `shape`, for each model.

    Each run is timed by `torch.utils.benchmark.Timer` (CUDA synchronisation, the process's
    thread count); the models are timed in alternation, one run each per round, so a machine
    that slows down or speeds up during the measurement (other processes, frequency scaling)
    biases none of them against the others."""
    x = torch.randn(shape, device=device)
    timers = {name: Timer("model(x)", globals={"model": m.eval().to(device), "x": x},
                          num_threads=torch.get_num_threads()) for name, m in models.items()}
    for timer in timers.values():
        timer.timeit(warmup)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, timer in timers.items():
            times[name].append(timer.timeit(1).median * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}
