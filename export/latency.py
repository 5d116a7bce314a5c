"""Wall-clock latency of a model, so the real speed-up stands next to the MACs ratio."""
from __future__ import annotations

import statistics
import time

import torch


@torch.inference_mode()
def latency_ms(model: torch.nn.Module, shape: tuple[int, ...], repeats: int = 20,
               warmup: int = 5, device: str | torch.device = "cpu") -> float:
    """Median milliseconds per forward pass of a random batch of `shape`."""
    model = model.eval().to(device)
    x = torch.randn(shape, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        model(x)
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
