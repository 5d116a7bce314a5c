"""Time one bilevel search step (architecture step on a validation batch, then a weight step on
a training batch) of a search space on random inputs: ms/step, images/s, peak memory.

    python -m benchmarks.search_step --space darts --batch 64 --precision fp32 --order 1
    python -m benchmarks.search_step --space darts --precision bf16 --channels-last --order 2

The step is the search loop's own (`Searcher.arch_step` + `Searcher.weight_step`), with the
default space config (DARTS: 8 cells, 16 channels, 32x32 inputs, 10 classes). cudnn.benchmark
is on. Peak memory is `torch.cuda.max_memory_allocated` on a GPU and the process's peak RSS on a
CPU. It also counts the aten ops one step dispatches (views excluded, optimizers in their
multi-tensor form as on a GPU): on a GPU each is at least one kernel launch, and launches, not
arithmetic, set the step time of this space. Pass `darts.fused=false` for the per-edge schedule.
Writes benchmarks/results/search_step-<device>-<space>-b<batch>-<precision>[-cl]-o<order>[-peredge].json.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from maskednas.pipeline.config import load_config, search_goals
from maskednas.pipeline.setup import DataMeta, build_supernet, select_device
from maskednas.search.loop import Searcher
from maskednas.search.op_count import OpCounter
from maskednas.search.penalty import resolve_targets

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="darts", choices=["darts", "macro"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--order", type=int, default=1, choices=[1, 2])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (cudnn autotune)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--size", type=int, default=32, help="input resolution")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. darts.cells=5")
    return p.parse_args(argv)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    cfg = load_config(None, [f"space={args.space}", f"search.order={args.order}",
                             f"amp={args.precision == 'bf16'}", f"channels_last={args.channels_last}",
                             f"data.batch_size={args.batch}", "search.warmup_epochs=0",
                             *args.overrides])
    device = select_device(args.device)
    torch.manual_seed(0)
    meta = DataMeta("random", 3, 10, args.size, (0.0,) * 3, (1.0,) * 3)
    net = build_supernet(cfg, meta, device).train()
    targets = resolve_targets(search_goals(cfg), net, cfg.derive.min_channels)
    searcher = Searcher(cfg, net, None, None, targets, Path(tempfile.mkdtemp()))
    for opt in (searcher.w_opt, searcher.architect.optimizer):
        opt.param_groups[0]["foreach"] = True  # what a GPU runs; the CPU default loops per tensor
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    def batch():
        x = torch.randn(args.batch, 3, args.size, args.size, device=device)
        return x.contiguous(memory_format=memory_format), torch.randint(0, 10, (args.batch,), device=device)

    batches = [(batch(), batch()) for _ in range(2)]

    def step(i: int) -> None:
        train, val = batches[i % 2]
        searcher.arch_step(train, val)
        searcher.weight_step(*train)

    for i in range(args.warmup):
        step(i)
    counter = OpCounter()
    with counter:
        step(args.warmup)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.steps):
        start = time.perf_counter()
        step(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    ms = 1000 * statistics.median(times)
    result = {
        "space": args.space, "batch": args.batch, "precision": args.precision,
        "channels_last": args.channels_last, "order": args.order, "ms_per_step": round(ms, 2),
        "ops_per_step": counter.ops,
        "images_per_s": round(2 * args.batch / (ms / 1000), 1),  # a step reads a train and a val batch
        "peak_memory_gib": round(peak_memory_gib(device), 3),
        "peak_memory_kind": "cuda max allocated" if device.type == "cuda" else "process peak RSS",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "steps": args.steps,
        "overrides": args.overrides,
    }
    per_edge = not getattr(cfg.space_config, "fused", True)
    name = (f"search_step-{device.type}-{args.space}-b{args.batch}-{args.precision}"
            f"{'-cl' if args.channels_last else ''}-o{args.order}{'-peredge' if per_edge else ''}.json")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / name).write_text(json.dumps(result, indent=2))
    print(f"{args.space} b={args.batch} {args.precision}{' channels_last' if args.channels_last else ''} "
          f"order {args.order} on {result['device']}: {ms:.1f} ms/step, "
          f"{result['images_per_s']:.0f} images/s, peak {result['peak_memory_gib']:.2f} GiB "
          f"({result['peak_memory_kind']}), {counter.ops:,} aten ops/step")
    return result


if __name__ == "__main__":
    main()
