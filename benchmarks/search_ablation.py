"""Which search settings decide the accuracy of ours: one change at a time, on the cifar16 preset.

    python -m benchmarks.search_ablation [--fraction 0.12] [--seeds 0 1 2]
    python -m benchmarks.search_ablation --seeds 1     # one part: search_ablation-seed1.json
    python -m benchmarks.search_ablation --merge       # the parts into search_ablation.{md,json}

Each variant runs the pipeline (search, derive, fine-tune; no export) at a MACs target given as a
fraction of the conv_3x3 backbone of `benchmarks/pareto.py`, every row with runs of its own, and
reports validation and test accuracy (the validation split, 10% of the training images, is what
settings are chosen on; nothing trains on it), the slimmed model's validation accuracy before
fine-tuning, and where the search's derived network ended relative to the target. Writes
benchmarks/results/search_ablation.{md,json}.
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

# cumulative: each variant adds one change to the one before; the fourth is today's default
VARIANTS = {
    "before (T-scaled penalty gradients, weights on half, no hold)": [
        "search.target.surrogate_temperature=null", "search.regime=bilevel",
        "search.hold_target=false"],
    "+ penalty gradients at T = 1": ["search.regime=bilevel", "search.hold_target=false"],
    "+ weights on every training image": ["search.hold_target=false"],
    "+ hold the target (the default)": [],
    # the default with the loss's gradient to the architecture zeroed: the cost alone decides
    "+ penalty only": ["search.arch_loss_weight=0"],
}


def summarize(rows: list[dict], fraction: float, target: float) -> str:
    seeds = sorted({r["seed"] for r in rows})

    def stat(values: list[float]) -> str:
        mean = f"{statistics.mean(values):.2f}"
        return mean + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")
    lines = [f"cifar16, target {fraction:.0%} of the backbone's MACs ({target:,.0f}), seeds {seeds}; "
             "each row adds one change to the row above; validation: 10% of the training images, held out",
             "", "| variant | val acc | test acc | slimmed val acc, before fine-tuning "
             "| search ended at (× target) | s per run |", "|---|---|---|---|---|---|"]
    for name in VARIANTS:
        runs = [r for r in rows if r["variant"] == name]
        if runs:
            ends = ", ".join(f"{r['search_end']:.3f}" for r in runs)
            lines.append(f"| {name} | {stat([100 * r['val_acc'] for r in runs])} | "
                         f"{stat([100 * r['test_acc'] for r in runs])} | "
                         f"{stat([100 * r['slimmed_val_acc'] for r in runs])} | {ends} | "
                         f"{statistics.mean(r['seconds'] for r in runs):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fraction", type=float, default=0.12)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--merge", action="store_true", help="merge the per-seed parts and stop")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        parts = [json.loads(f.read_text()) for f in sorted(out.glob("search_ablation-seed*.json"))]
        if not parts:
            p.error(f"no search_ablation-seed*.json parts in {out}: run --seeds N first")
        if len({(part["fraction"], part["target_macs"]) for part in parts}) > 1:
            p.error("the parts were run at different targets: merge parts of one --fraction")
        args.fraction, target = parts[0]["fraction"], parts[0]["target_macs"]
        rows = [r for part in parts for r in part["rows"]]
    else:
        bench = Bench(*PRESETS["cifar16"])
        target = args.fraction * bench.dense_macs()
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for name, changes in VARIANTS.items():  # every row its own runs
                for seed in args.seeds:
                    cfg = bench.ours_config(target, seed, changes)
                    run_dir = Path(tmp) / f"{len(rows)}"
                    start = time.perf_counter()
                    m = run(cfg, run_dir, stages=("search", "derive", "finetune"), data=bench.data,
                            report=lambda _: None)
                    search = torch.load(run_dir / "search.pt", weights_only=True)["history"]
                    rows.append({"variant": name, "seed": seed, "val_acc": m["val_acc"], "test_acc": m["test_acc"],
                                 "slimmed_val_acc": m["slimmed_val_acc"], "slimmed_test_acc": m["slimmed_test_acc"],
                                 "macs": m["macs"], "search_end": search[-1]["discrete_macs"] / target,
                                 "seconds": time.perf_counter() - start})
                    print(json.dumps(rows[-1]), flush=True)
    part = not args.merge and len(args.seeds) == 1
    name = f"search_ablation-seed{args.seeds[0]}" if part else "search_ablation"
    (out / f"{name}.json").write_text(json.dumps({"fraction": args.fraction, "target_macs": target,
                                                  "rows": rows}, indent=2))
    table = summarize(rows, args.fraction, target)
    if not part:
        (out / f"{name}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
