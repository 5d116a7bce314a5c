"""Which search settings decide the accuracy of ours: one change at a time, on the cifar16 preset.

    python -m benchmarks.search_ablation [--fraction 0.12] [--seeds 3]

Each variant runs the pipeline (search, derive, fine-tune; no export) at a MACs target given as a
fraction of the conv_3x3 backbone of `benchmarks/pareto.py`, and reports the test accuracy, the
slimmed model's accuracy before fine-tuning, and where the search's derived network ended
relative to the target. Writes benchmarks/results/search_ablation.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.pareto import PRESETS, ROOT, Bench
from maskednas.pipeline import run

# cumulative: each variant adds one change to the one before; the last is today's default
VARIANTS = {
    "before (T-scaled penalty gradients, weights on half, no hold)": [
        "search.target.surrogate_temperature=null", "search.regime=bilevel",
        "search.hold_target=false"],
    "+ penalty gradients at T = 1": ["search.regime=bilevel", "search.hold_target=false"],
    "+ weights on every training image": ["search.hold_target=false"],
    "+ hold the target (the default)": [],
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fraction", type=float, default=0.12)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    bench = Bench(*PRESETS["cifar16"])
    target = args.fraction * bench.dense_macs()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, changes in VARIANTS.items():
            for seed in range(args.seeds):
                cfg = bench.ours_config(target, seed, changes)
                run_dir = Path(tmp) / f"{len(rows)}"
                start = time.perf_counter()
                m = run(cfg, run_dir, stages=("search", "derive", "finetune"), data=bench.data,
                        report=lambda _: None)
                search = torch.load(run_dir / "search.pt", weights_only=True)["history"]
                rows.append({"variant": name, "seed": seed, "test_acc": m["test_acc"],
                             "slimmed_test_acc": m["slimmed_test_acc"], "macs": m["macs"],
                             "search_end": search[-1]["discrete_macs"] / target,
                             "seconds": time.perf_counter() - start})
                print(json.dumps(rows[-1]), flush=True)
    lines = [f"cifar16, target {args.fraction:.0%} of the backbone's MACs ({target:,.0f}), "
             f"{args.seeds} seeds; each row adds one change to the row above",
             "", "| variant | test acc | slimmed, before fine-tuning | search ended at (× target) | s per run |",
             "|---|---|---|---|---|"]
    for name in VARIANTS:
        runs = [r for r in rows if r["variant"] == name]
        acc = [100 * r["test_acc"] for r in runs]
        slim = [100 * r["slimmed_test_acc"] for r in runs]
        ends = ", ".join(f"{r['search_end']:.3f}" for r in runs)
        lines.append(f"| {name} | {statistics.mean(acc):.2f} ± {statistics.stdev(acc) if len(acc) > 1 else 0.0:.2f} | "
                     f"{statistics.mean(slim):.2f} | {ends} | "
                     f"{statistics.mean(r['seconds'] for r in runs):.0f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "search_ablation.json").write_text(json.dumps({"target_macs": target, "rows": rows}, indent=2))
    (out / "search_ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
