"""Search speed when another process is busy: the default digits search's steps per second
alone and beside one competing process (a pure-Python busy loop, the lightest load there is),
for each torch thread count, timed in turn in one process.

    python -m benchmarks.contention        # threads 1 and 2, 3 rounds of 10 s per measurement

Each measurement runs whole search steps (architecture step on a validation batch, then a
weight step) of `configs/digits.yaml` for `--seconds` (at least 3 steps); the figures are
medians over `--rounds` rounds, each round measuring every thread count alone and loaded in
turn. Writes
benchmarks/results/contention.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from maskednas.pipeline.config import load_config
from maskednas.pipeline.setup import prepare_search

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def steps_per_second(searcher, seconds: float) -> float:
    batches = list(zip(searcher.train_loader, searcher.arch_loader))
    searcher.net.train()
    done, start = 0, time.perf_counter()
    while done < 3 or time.perf_counter() - start < seconds:
        train, val = batches[done % len(batches)]
        searcher.arch_step(train, val)
        searcher.weight_step(*train)
        done += 1
    return done / (time.perf_counter() - start)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    p.add_argument("--rounds", type=int, default=3, help="medians over this many")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    cfg = load_config("digits", ["search.warmup_epochs=0", f"out_dir={tempfile.mkdtemp()}"])
    searcher = prepare_search(cfg, Path(tempfile.mkdtemp()))
    steps_per_second(searcher, 2.0)  # warm-up
    measured = {(t, load): [] for t in args.threads for load in ("alone", "loaded")}
    for _ in range(args.rounds):  # interleaved: a machine that drifts biases no column
        for threads in args.threads:
            torch.set_num_threads(threads)
            measured[threads, "alone"].append(steps_per_second(searcher, args.seconds))
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                time.sleep(0.5)
                measured[threads, "loaded"].append(steps_per_second(searcher, args.seconds))
            finally:
                busy.kill()
                busy.wait()
    rows = []
    for threads in args.threads:
        alone = statistics.median(measured[threads, "alone"])
        loaded = statistics.median(measured[threads, "loaded"])
        rows.append({"threads": threads, "alone_steps_per_s": round(alone, 2),
                     "loaded_steps_per_s": round(loaded, 2), "slowdown": round(alone / loaded, 2),
                     "alone_runs": [round(v, 2) for v in measured[threads, "alone"]],
                     "loaded_runs": [round(v, 2) for v in measured[threads, "loaded"]]})
        print(rows[-1], flush=True)
    result = {"rows": rows, "cores": os.cpu_count(), "cpu": platform.processor() or "cpu",
              "torch": torch.__version__, "seconds": args.seconds, "rounds": args.rounds,
              "default_threads": cfg.threads}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "contention.json").write_text(json.dumps(result, indent=2))
    lines = ["| torch threads | steps/s alone | steps/s beside one busy process | slowdown |",
             "|---|---|---|---|"]
    lines += [f"| {r['threads']} | {r['alone_steps_per_s']} | {r['loaded_steps_per_s']} | "
              f"{r['slowdown']}x |" for r in rows]
    (args.out / "contention.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
