"""Search-step throughput with one process and with ranks under torchrun (gloo on the CPU, NCCL on
GPUs), on the digits config, at the same global batch.

    python -m benchmarks.ddp_throughput                    # CPU: 1 process x 1 and x 2 threads,
                                                            # 2 processes x 1 thread (torchrun)
    python -m benchmarks.ddp_throughput --gpus 8            # GPUs: 1, 2, 4, 8 ranks, one GPU each

Each variant runs the search loop's own epochs (`Searcher.run_epoch`: architecture step on a
validation batch, then a weight step on a training batch, after the warm-up epochs of the
config are skipped) on its shards: one untimed epoch, then `--epochs` timed epochs between
barriers. Throughput counts the global batch: images/s = steps x global batch x 2 (a step reads
a training and a validation batch) / seconds. Writes benchmarks/results/<--name>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]

from maskednas import parallel
from maskednas.pipeline.config import load_config
from maskednas.pipeline.setup import check_ranks, prepare_search, select_device

RESULTS = ROOT / "benchmarks" / "results"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "digits.yaml"))
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per variant")
    p.add_argument("--gpus", type=int, default=0, help="GPU ranks to scale to (0: CPU variants)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--name", default="ddp-throughput", help="results file name, without suffix")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. data.batch_size=128")
    return p.parse_args(argv)


def worker(args: argparse.Namespace) -> None:
    """One variant, in each of its processes; rank 0 prints the result as a JSON line."""
    cfg = load_config(args.config, [*args.overrides, "search.warmup_epochs=0",
                                    f"search.epochs={args.epochs + 1}"])
    device = select_device(cfg.device)
    parallel.start(device)
    check_ranks(cfg, device)
    with tempfile.TemporaryDirectory() as run_dir:
        searcher = prepare_search(cfg, Path(run_dir))
        bar = tqdm(disable=True)
        searcher.run_epoch(bar)  # untimed: allocations, autotuning, first-touch of the data
        sync(device)
        start = time.perf_counter()
        for _ in range(args.epochs):
            searcher.epoch += 1
            searcher.run_epoch(bar)
        sync(device)
        seconds = time.perf_counter() - start
        steps = args.epochs * len(searcher.train_loader)
    if parallel.is_main():
        batch = searcher.train_loader.batch_size
        print(json.dumps({"ranks": parallel.size(), "threads_per_rank": torch.get_num_threads(),
                          "device": device.type, "global_batch": batch,
                          "per_rank_batch": batch // parallel.size(), "steps": steps,
                          "seconds": round(seconds, 3),
                          "steps_per_s": round(steps / seconds, 2),
                          "images_per_s": round(2 * steps * batch / seconds, 1)}))
    parallel.stop()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    parallel.barrier()


def variant(args: argparse.Namespace, ranks: int, threads: int | None, device: str) -> dict:
    """Start one variant (under torchrun when ranks > 1) and read rank 0's JSON line."""
    launch = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
               "--master_port=29517"] if ranks > 1 else [sys.executable])
    command = [*launch, __file__, "--worker", "--config", args.config, "--epochs", str(args.epochs),
               f"device={device}", *([f"threads={threads}"] if threads else []), *args.overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads or 1)}
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{out.stdout[-2000:]}{out.stderr[-3000:]}")
    result = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
    print(f"{ranks} rank(s) x {result['threads_per_rank']} thread(s) on {device}: "
          f"{result['steps_per_s']:.2f} steps/s, {result['images_per_s']:.0f} images/s "
          f"(global batch {result['global_batch']}, {result['per_rank_batch']} per rank)")
    return result


def report(results: list[dict], args: argparse.Namespace) -> str:
    base = results[0]["images_per_s"]
    lines = ["| ranks | threads per rank | device | global batch | per-rank batch | steps/s | "
             "images/s | vs first row |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['ranks']} | {r['threads_per_rank']} | {r['device']} | "
                     f"{r['global_batch']} | {r['per_rank_batch']} | {r['steps_per_s']:.2f} | "
                     f"{r['images_per_s']:.0f} | {r['images_per_s'] / base:.2f}x |")
    command = " ".join(["python -m benchmarks.ddp_throughput", *sys.argv[1:]])
    return "\n".join([f"Command: `{command}`; {args.epochs} timed search epochs per row "
                      f"(first order), {platform.processor() or platform.machine()}, "
                      f"{os.cpu_count()} CPUs, torch {torch.__version__}.", "", *lines, ""])


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.gpus:
        plan = [(n, None, "cuda") for n in (1, 2, 4, 8, 16) if n <= args.gpus]
    else:
        plan = [(1, 1, "cpu"), (1, 2, "cpu"), (2, 1, "cpu")]
    results = [variant(args, ranks, threads, device) for ranks, threads, device in plan]
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.name
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2))
    table = report(results, args)
    (args.out / f"{name}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
