"""One supernet and its front against a differentiable search per target, on the CIFAR subset.

    python -m benchmarks.front --preset resnet20             # a user's ResNet-20 (model space)
    python -m benchmarks.front --preset cifar16              # the macro space at 16x16
    python -m benchmarks.front --preset resnet20 --seeds 1   # one part: ...-seed1.json
    python -m benchmarks.front --preset resnet20 --merge     # the parts into front-<preset>.{md,json,png}
    python -m benchmarks.front --quick                       # tiny epochs, one seed

Per seed and preset: (a) a differentiable search (the pipeline) per MACs target, each derived,
fine-tuned and exported; (b) one supernet trained by the sandwich rule (`--supernet-epochs`, the
config's warm-up epochs training the largest subnet alone), then the front searched with each of Optuna's strategies (evolution, bayesian,
random) at the same number of evaluations, and the evolution front's subnet per budget fine-tuned
with the same recipe. The model space starts from the same trained ResNet-20 (benchmarks.prune_resnet
trains it) and distils from it in every fine-tune. Reported: validation and test accuracy per
budget, each front's read-off validation accuracy (before fine-tuning, BatchNorm re-estimated),
and the compute of each approach in epochs and seconds. Held-out protocol: every choice reads
the validation split; the test set is read once per final model.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.prune_resnet import Bench as ResNetBench
from maskednas.pipeline import load_config, run
from maskednas.pipeline.front import front
from maskednas.pipeline.setup import load_data
from maskednas.pipeline.stages import search

ROOT = Path(__file__).resolve().parents[1]
DATA = f"data.path={ROOT.parent / 'shared' / 'data' / 'cifar10_subset.npz'}"
PRESETS = {  # config, overrides, the supernet's own overrides
    # the sandwich rule keeps each group's channels of highest magnitude (Once-for-All's order)
    "resnet20": (ROOT / "configs" / "prune_cifar_resnet20.yaml",
                 [DATA, "model.source=benchmarks.cifar_resnet:resnet20"], ["model.mask_init_from=magnitude"]),
    "cifar16": (ROOT / "configs" / "cifar10_subset_cpu.yaml", [DATA, "data.resize=16"], []),
}
STRATEGIES = ("evolution", "bayesian", "random")


def silent(_: str) -> None:
    pass


def one_seed(args, seed: int, workdir: Path) -> list[dict]:
    config, overrides, supernet = PRESETS[args.preset]
    common = [*overrides, f"seed={seed}", f"search.epochs={args.search_epochs}",
              f"finetune.epochs={args.finetune_epochs}", "threads=null"]
    rows = []
    workdir.mkdir(parents=True)
    if args.preset == "resnet20":  # the user's trained network, as benchmarks.prune_resnet trains it
        bench = ResNetBench(argparse.Namespace(depth=20, dense_epochs=args.dense_epochs,
                                               search_epochs=args.search_epochs,
                                               finetune_epochs=args.finetune_epochs))
        _, checkpoint, dense = bench.dense(seed, workdir)
        common.append(f"model.checkpoint={checkpoint}")
        rows.append({"seed": seed, "approach": "dense", "fraction": 1.0, **dense, "epochs": args.dense_epochs})
    data = load_data(load_config(config, common))
    for fraction in args.fractions:  # (a) a search per target
        start = time.perf_counter()
        cfg = load_config(config, [*common, f"search.targets.macs.fraction={fraction}"])
        m = run(cfg, workdir / f"target-{fraction}", data=data, report=silent)
        rows.append({"seed": seed, "approach": "per-target search", "fraction": fraction,
                     "val_acc": m["val_acc"], "test_acc": m["test_acc"], "macs": m["macs"],
                     "dense_macs": m["dense_macs"], "seconds": time.perf_counter() - start,
                     "epochs": args.search_epochs + args.finetune_epochs})
        print(json.dumps(rows[-1]), flush=True)
    # (b) one supernet, then each strategy's front at the same evaluations
    start = time.perf_counter()
    cfg = load_config(config, [*common, *supernet, "search.strategy=sandwich", "search.targets={}",
                               f"search.epochs={args.supernet_epochs}",
                               f"front.budgets={list(args.fractions)}", f"front.trials={args.trials}"])
    searched = search(cfg, workdir / "supernet", data, tensorboard=False, report=silent)
    trained = time.perf_counter() - start
    for strategy in STRATEGIES:
        start = time.perf_counter()
        finetuned = strategy == "evolution"
        cfg.front.strategy, cfg.front.finetune = strategy, finetuned
        result = front(cfg, workdir / f"front-{strategy}", data, searched, report=silent,
                       export=finetuned)
        for name, pick in result["picks"].items():
            export = result["exports"].get(name, {})
            rows.append({"seed": seed, "approach": f"front ({strategy})",
                         "fraction": float(name.rsplit("-", 1)[1]), "read_off_val_acc": pick["val_acc"],
                         **{k: export[k] for k in ("val_acc", "test_acc") if k in export},
                         "macs": pick["macs"], "dense_macs": result["dense"]["macs"],
                         "evaluations": len(result["candidates"])})
        rows.append({"seed": seed, "approach": f"front ({strategy})", "fraction": None,
                     "supernet_seconds": trained, "front_seconds": time.perf_counter() - start,
                     "epochs": args.supernet_epochs + (args.finetune_epochs * len(args.fractions) if finetuned else 0),
                     "pareto_points": len(result["pareto"])})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def stat(values: list[float], scale: float = 100, fmt: str = "{:.2f}") -> str:
    values = [scale * v for v in values if v is not None]
    if not values:
        return "-"
    return fmt.format(statistics.mean(values)) + (f" ± {fmt.format(statistics.stdev(values))}"
                                                  if len(values) > 1 else "")


def summarize(rows: list[dict], preset: str) -> str:
    seeds = sorted({r["seed"] for r in rows})
    per_budget = [r for r in rows if r["fraction"] not in (None, 1.0)]
    lines = [f"{preset}: one sandwich-trained supernet and its fronts against a differentiable "
             f"search per target (mean ± std over seeds {seeds}; validation: 10% of the training "
             f"images, held out)", "",
             "| target | approach | read-off val acc (%) | val acc (%) | test acc (%) | MACs (of dense) |",
             "|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["fraction"], r["approach"]) for r in per_budget))
    for fraction, approach in sorted(keys, key=lambda k: -k[0]):
        group = [r for r in per_budget if (r["fraction"], r["approach"]) == (fraction, approach)]
        share = statistics.mean(r["macs"] / r["dense_macs"] for r in group)
        lines.append(f"| {fraction:g} | {approach} | {stat([r.get('read_off_val_acc') for r in group])} | "
                     f"{stat([r.get('val_acc') for r in group])} | {stat([r.get('test_acc') for r in group])} | "
                     f"{share:.1%} |")
    lines += ["", "Compute per seed (all targets together; fine-tunes included where the approach "
              "fine-tunes)", "", "| approach | epochs | seconds |", "|---|---|---|"]
    searches = [r for r in rows if r["approach"] == "per-target search"]
    if searches:
        per_seed = [sum(r["seconds"] for r in searches if r["seed"] == s) for s in seeds]
        lines.append(f"| per-target search x {len({r['fraction'] for r in searches})} | "
                     f"{sum(r['epochs'] for r in searches) // len(seeds)} | {stat(per_seed, 1, '{:.0f}')} |")
    for r_approach in dict.fromkeys(r["approach"] for r in rows if r["fraction"] is None):
        group = [r for r in rows if r["approach"] == r_approach and r["fraction"] is None]
        lines.append(f"| {r_approach} (supernet + front{' + fine-tunes' if 'evolution' in r_approach else ''}) | "
                     f"{group[0]['epochs']} | "
                     f"{stat([r['supernet_seconds'] + r['front_seconds'] for r in group], 1, '{:.0f}')} |")
    return "\n".join(lines)


def plot(rows: list[dict], preset: str, path: Path) -> None:
    """Left: test accuracy after fine-tuning against MACs, the front's picks against the searches
    per target (dense as a line); right: each strategy's read-off validation accuracy at its picks."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def curve(ax, approach: str, key: str) -> None:
        points = []
        for fraction in sorted({r["fraction"] for r in rows if r["fraction"] not in (None, 1.0)}):
            group = [r for r in rows if r["approach"] == approach and r["fraction"] == fraction
                     and r.get(key) is not None]
            if group:
                accs = [100 * r[key] for r in group]
                points.append((statistics.mean(r["macs"] for r in group) / 1e6, statistics.mean(accs),
                               statistics.stdev(accs) if len(accs) > 1 else 0.0))
        if points:
            x, y, e = zip(*points)
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=approach)

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    for approach in ("per-target search", "front (evolution)"):
        curve(left, approach, "test_acc")
    dense = [100 * r["test_acc"] for r in rows if r["approach"] == "dense"]
    if dense:
        left.axhline(statistics.mean(dense), color="grey", linestyle="--", label="dense")
    for approach in (f"front ({s})" for s in STRATEGIES):
        curve(right, approach, "read_off_val_acc")
    seeds = sorted({r["seed"] for r in rows})
    for ax, title in ((left, "test accuracy after the same fine-tune"),
                      (right, "read-off validation accuracy (no fine-tune, BN re-estimated)")):
        ax.set_xlabel("MACs (millions, fvcore)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{preset}: {title}, mean ± std over seeds {seeds}", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="resnet20")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.25, 0.125])
    p.add_argument("--dense-epochs", type=int, default=20, help="resnet20: the trained network")
    p.add_argument("--search-epochs", type=int, default=4)
    p.add_argument("--supernet-epochs", type=int, default=None, help="default: --search-epochs")
    p.add_argument("--finetune-epochs", type=int, default=10)
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--merge", action="store_true", help="merge the per-seed parts and stop")
    p.add_argument("--quick", action="store_true", help="1 epoch each, one seed, few trials")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    base = f"front-{args.preset}"
    if args.merge:
        rows = [r for part in sorted(args.out.glob(f"{base}-seed*.json"))
                for r in json.loads(part.read_text())["rows"]]
    else:
        if args.quick:
            args.seeds = args.seeds[:1]
            args.dense_epochs = args.search_epochs = args.finetune_epochs = 1
            args.trials = 6
        args.supernet_epochs = args.supernet_epochs or args.search_epochs
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for seed in args.seeds:
                rows += one_seed(args, seed, Path(tmp) / str(seed))
    part = not args.merge and not args.quick and len(args.seeds) == 1
    name = base + ("-quick" if args.quick else f"-seed{args.seeds[0]}" if part else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))
    table = summarize(rows, args.preset)
    if not part:
        (args.out / f"{name}.md").write_text(table + "\n")
        plot(rows, args.preset, args.out / f"{name}.png")
    print(table)
    return rows


if __name__ == "__main__":
    main()
