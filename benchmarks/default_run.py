"""Wall time and results of the default `python train.py` (digits, every stage), or of
another shipped config.

    python -m benchmarks.default_run [--repeats 1] [extra train.py overrides...]
    python -m benchmarks.default_run --config prune_resnet18

Runs train.py in a subprocess exactly as a user would, and writes
benchmarks/results/default_run.{json,md} (another config: run-<config>.{json,md}).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from maskednas.pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def run_once(name: str, config: str, overrides: list[str]) -> dict:
    run_dir = ROOT / "runs" / "bench" / name
    shutil.rmtree(run_dir, ignore_errors=True)  # a benchmark measures a fresh run
    run_dir.mkdir(parents=True)
    start = time.perf_counter()
    with open(run_dir.with_suffix(".log"), "w") as log:  # progress bars go to the log
        subprocess.run([sys.executable, "train.py", "--config", config, f"name={name}",
                        "out_dir=runs/bench", *overrides],
                       cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    summary = json.loads((run_dir / "summary-export.json").read_text())
    history = torch.load(run_dir / "search.pt", weights_only=True)["history"]
    return {"wall_s": wall, "search_val_acc": history[-1]["arch_acc"],
            "search_expected_macs": history[-1]["expected_macs"],
            "search_discrete_macs": history[-1]["discrete_macs"], **summary}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--config", default="digits", help="a shipped config's name")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    runs = [run_once(f"{args.config}-{i}", args.config, args.overrides) for i in range(args.repeats)]
    threads = load_config(ROOT / "runs" / "bench" / f"{args.config}-0" / "config.yaml").threads
    stem = "default_run" if args.config == "digits" else f"run-{args.config}"
    machine = {"cpu_count": os.cpu_count(), "run_torch_threads": threads or torch.get_num_threads(),
               "torch": torch.__version__, "python": platform.python_version()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"machine": machine, "runs": runs}, indent=2))
    rows = ["| run | wall time | search val acc | derived MACs (target) | dense MACs | "
            "test acc slimmed → fine-tuned | CPU latency b=64 dense → slim |",
            "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(runs):
        lat = r["cpu_latency_ms"]
        rows.append(f"| {i} | {r['wall_s']:.0f} s | {r['search_val_acc']:.3f} | "
                    f"{r['macs']:,} ({r['target_macs']:,.0f}) = {r['macs'] / r['dense_macs']:.1%} of dense | "
                    f"{r['dense_macs']:,} | {r['slimmed_test_acc']:.4f} → {r['test_acc']:.4f} | "
                    f"{lat['dense_b64']:.1f} → {lat['slim_b64']:.1f} ms |")
    table = "\n".join(rows)
    (RESULTS / f"{stem}.md").write_text(
        f"`python train.py --config {args.config}` on {machine['cpu_count']} CPU cores ({machine['run_torch_threads']} "
        f"torch thread(s)), torch {machine['torch']}\n\n"
        f"{table}\n")
    print(table)


if __name__ == "__main__":
    main()
