"""Wall-clock latency of models, so the real speed-up stands next to the MACs ratio."""
from __future__ import annotations

import statistics
import time

import torch


@torch.inference_mode()
def latencies_ms(models: dict[str, torch.nn.Module], shape: tuple[int, ...], repeats: int = 50,
                 warmup: int = 10, device: str | torch.device = "cpu") -> dict[str, float]:
    """Median milliseconds per forward pass of a random batch of `shape`, for each model.

    The models are timed in alternation, so a machine that slows down or speeds up during the
    measurement (other processes, frequency scaling) biases none of them against the others."""
    models = {name: m.eval().to(device) for name, m in models.items()}
    x = torch.randn(shape, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for model in models.values():
        for _ in range(warmup):
            model(x)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            sync()
            start = time.perf_counter()
            model(x)
            sync()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}
