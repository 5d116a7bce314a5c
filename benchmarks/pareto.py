"""Accuracy against MACs: ours vs uniform width, L1-norm filter pruning, Torch-Pruning and
random architectures, at the same MACs targets, epochs, augmentation and evaluation.

    python -m benchmarks.pareto --preset digits            # 3 targets x 3 seeds, both budgets
    python -m benchmarks.pareto --preset cifar_subset      # ../shared/data/cifar10_subset.npz
    python -m benchmarks.pareto --preset cifar16           # the same at 16x16: a CPU's size
    python -m benchmarks.pareto --quick                    # tiny epochs, one seed (CI-sized)

The backbone is the search space's widths with conv_3x3 in every layer (a pre-activation
ResNet-style network); targets are fractions of its MACs. Two budgets, reported side by side:
(a) every method trains for the same total number of epochs E = search + fine-tune epochs of the
config: ours searches then fine-tunes (the pipeline); uniform width and random architectures train
from scratch for E; L1 pruning and Torch-Pruning pre-train the dense backbone for the search epochs
and fine-tune for the rest. (b) every final network trains for the fine-tune epochs (uniform and
random from scratch for those alone), and ours' search cost is reported beside it in epochs and
seconds, as TAS, AutoSlim and DMCP report theirs (L1 and Torch-Pruning keep their pre-training).
All use the config's fine-tune learning rate and schedule. MACs and params of every final model
are counted by fvcore on the model. Writes benchmarks/results/pareto-<preset>.{md,json,png}.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import torch

from maskednas.derive import slim
from maskednas.derive.baselines import (l1_filter_pruning, load_dense_weights, random_architecture,
                                        torch_pruning_magnitude, uniform_width)
from maskednas.export import build, load
from maskednas.export.flops import fvcore_report
from maskednas.pipeline import load_config, run
from maskednas.pipeline.setup import TrainingContext, build_supernet, load_data, seed_everything, select_device

ROOT = Path(__file__).resolve().parents[1]
DATA = f"data.path={ROOT.parent / 'shared' / 'data' / 'cifar10_subset.npz'}"
PRESETS = {
    "digits": ("configs/digits.yaml", []),
    "cifar_subset": ("configs/cifar10_subset.yaml", [DATA]),
    # real images a 2-core CPU can compare methods on: the CIFAR subset at 16x16 (antialiased)
    "cifar16": ("configs/cifar10_subset_cpu.yaml", [DATA, "data.resize=16"]),
}
QUICK = ["search.epochs=2", "search.warmup_epochs=1", "finetune.epochs=1"]
FRACTIONS = (0.12, 0.25, 0.5)
METHODS = ("ours", "uniform", "l1", "torch_pruning", "random")


class Bench:
    """One comparison: the config's data and space, the backbone, and each method's training.

    Ours, L1 and Torch-Pruning train the same way under both budgets (ours: search + fine-tune;
    L1 and Torch-Pruning: dense pre-training for the search epochs + fine-tune), so one run of
    each serves both; uniform width and random architectures train from scratch for each
    budget's epochs. The pre-trained dense backbone does not depend on the target: one per seed."""

    def __init__(self, config: str, overrides: list[str], budgets=("a", "b")) -> None:
        self.config, self.overrides = config, overrides
        self.cfg = load_config(ROOT / config, overrides)
        self.data = load_data(self.cfg)
        self.device = select_device(self.cfg.device)
        self.ctx = TrainingContext(self.cfg, self.data, self.device)
        self.meta = self.ctx.meta
        backbone_space = replace(self.cfg.space_config, candidates=["conv_3x3"],
                                 first_candidates=["conv_3x3"])
        self.backbone_cfg = replace(self.cfg, space_config=backbone_space)
        ft, search = self.cfg.finetune.epochs, self.cfg.search.epochs
        # epochs that train a final network from scratch: (a) the total, (b) the fine-tune's
        self.scratch_epochs = {b: e for b, e in {"a": ft + search, "b": ft}.items() if b in budgets}
        self.example = torch.randn(1, self.meta.in_channels, self.meta.input_size, self.meta.input_size)
        self._dense: dict[int, tuple] = {}

    def backbone(self):
        return build_supernet(self.backbone_cfg, self.meta, self.device)

    def dense_macs(self) -> float:
        return self.backbone().dense_architecture().cost().macs

    def ours_config(self, target: float, seed: int, changes: list[str] = ()):
        """The preset's config for one run of ours at an absolute MACs target."""
        return load_config(ROOT / self.config, [*self.overrides, f"search.targets.macs.value={target}",
                                                "search.targets.macs.fraction=null", f"seed={seed}",
                                                *changes])

    def train_eval(self, model, epochs: int, seed: int) -> float:
        seed_everything(seed)
        ft = replace(self.cfg.finetune, epochs=epochs, kd_weight=0.0, from_scratch=False,
                     ema_decay=None)
        model = self.ctx.train(model, ft, train_loader=self.ctx.train_loader(seed + 2))
        return self.ctx.evaluate(model)["acc"]

    def measured(self, model, acc: float, start: float, **extra) -> dict:
        macs, params, _ = fvcore_report(model.cpu(), self.example)
        return {"macs": macs, "params": params, "test_acc": acc,
                "seconds": time.perf_counter() - start, **extra}

    # -- methods: each returns {budget: result} ----------------------------------------------------
    def ours(self, target: float, seed: int, workdir: Path) -> dict:
        cfg = self.ours_config(target, seed)
        run_dir = workdir / f"ours-{target:.0f}-{seed}"
        start = time.perf_counter()
        metrics = run(cfg, run_dir, data=self.data)
        model = load(run_dir / "export")
        search = torch.load(run_dir / "search.pt", weights_only=True)["history"]
        result = self.measured(model, metrics["test_acc"], start, search_epochs=len(search),
                               search_end_macs=search[-1]["discrete_macs"] if search else None)
        return {"a": result, "b": result}

    def _from_scratch(self, model_of, seed: int) -> dict:
        results = {}
        for budget, epochs in self.scratch_epochs.items():
            start = time.perf_counter()
            torch.manual_seed(seed)
            model = model_of()
            results[budget] = self.measured(model, self.train_eval(model, epochs, seed), start)
        return results

    def uniform(self, target: float, seed: int, workdir: Path) -> dict:
        arch = uniform_width(self.backbone(), target).arch
        return self._from_scratch(lambda: build(arch), seed)

    def random(self, target: float, seed: int, workdir: Path) -> dict:
        space = build_supernet(self.cfg, self.meta, self.device)
        arch = random_architecture(space, target, torch.Generator().manual_seed(seed)).arch
        return self._from_scratch(lambda: build(arch), seed)

    def _pretrained_dense(self, seed: int):
        """The backbone supernet, its ops and a dense network trained for the search epochs
        (a fresh copy each call)."""
        if seed not in self._dense:
            torch.manual_seed(seed)
            net = self.backbone()
            dense = build(net.dense_architecture())  # one candidate op: the widest path is the backbone
            self.train_eval(dense, self.cfg.search.epochs, seed)
            self._dense[seed] = (net, net.derive_ops(), dense.cpu())
        net, ops, dense = self._dense[seed]
        return copy.deepcopy(net), ops, copy.deepcopy(dense)

    def l1(self, target: float, seed: int, workdir: Path) -> dict:
        start = time.perf_counter()
        net, ops, dense = self._pretrained_dense(seed)
        load_dense_weights(net, dense.to(self.device), ops)
        model = slim(net, l1_filter_pruning(net, target))
        result = self.measured(model, self.train_eval(model, self.cfg.finetune.epochs, seed), start)
        return {"a": result, "b": result}

    def torch_pruning(self, target: float, seed: int, workdir: Path) -> dict:
        start = time.perf_counter()
        _, _, dense = self._pretrained_dense(seed)
        model = torch_pruning_magnitude(dense, self.example, target)
        result = self.measured(model, self.train_eval(model, self.cfg.finetune.epochs, seed), start)
        return {"a": result, "b": result}


BUDGETS = {
    "a": "the same total epochs for every method ({a}: ours' search counts against it)",
    "b": "the same epochs for every final network ({b}); ours' search and the baselines' dense "
         "pre-training come on top",
}


def summarize(rows: list[dict], dense_macs: float, title: str) -> str:
    fractions = sorted({r["fraction"] for r in rows})
    lines = [title, "", "| method | " + " | ".join(f"{f:.0%} of dense MACs" for f in fractions) + " |",
             "|---|" + "---|" * len(fractions)]
    for method in METHODS:
        cells = []
        for f in fractions:
            runs = [r for r in rows if r["method"] == method and r["fraction"] == f]
            if not runs:
                cells.append("n/a")
                continue
            accs = [r["test_acc"] for r in runs]
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            off = max(abs(r["macs"] / r["target_macs"] - 1) for r in runs)
            cells.append(f"{100 * statistics.mean(accs):.2f} ± {100 * std:.2f} "
                         f"({statistics.mean(r['macs'] for r in runs) / dense_macs:.1%}; "
                         f"≤{off:.0%} off)")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    ours = [r for r in rows if r["method"] == "ours"]
    if ours:
        lines += ["", f"Ours' search: {statistics.mean(r['search_epochs'] for r in ours):.0f} "
                      f"epochs; search + fine-tune + export took "
                      f"{statistics.mean(r['seconds'] for r in ours):.0f} s per run on average."]
    return "\n".join(lines)


def plot(rows: list[dict], dense_macs: float, path: Path, titles: dict[str, str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(titles), figsize=(6 * len(titles), 4), squeeze=False)
    for ax, (budget, title) in zip(axes[0], titles.items()):
        for method in METHODS:
            points = []
            for f in sorted({r["fraction"] for r in rows}):
                runs = [r for r in rows if r["method"] == method and r["fraction"] == f
                        and r["budget"] == budget]
                if runs:
                    accs = [100 * r["test_acc"] for r in runs]
                    points.append((statistics.mean(r["macs"] for r in runs) / 1e6,
                                   statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0))
            if points:
                x, y, e = zip(*points)
                ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=method)
        ax.set_xlabel("MACs (millions, fvcore)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(textwrap.fill(title, 70), fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="digits")
    p.add_argument("--quick", action="store_true", help="tiny epochs and one seed")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget", choices=["a", "b", "both"], default="both",
                   help="a: same total epochs for every method (the search counts against ours); "
                        "b: same epochs for every final network (the search reported beside it)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS), help="MACs targets, of the dense")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
    config, overrides = PRESETS[args.preset]
    overrides = [*overrides, *(QUICK if args.quick else [])]
    seeds = range(1 if args.quick else args.seeds)
    budgets = ["a", "b"] if args.budget == "both" else [args.budget]
    bench = Bench(config, overrides, budgets)
    dense = bench.dense_macs()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in args.fractions:
            for seed in seeds:
                for method in methods:
                    results = getattr(bench, method)(f * dense, seed, Path(tmp))
                    for budget in budgets:
                        r = results[budget]
                        rows.append({"method": method, "fraction": f, "seed": seed, "budget": budget,
                                     "target_macs": f * dense, **r})
                        print(f"{method:>14} {f:.0%} seed {seed} budget {budget}: "
                              f"{r['test_acc']:.4f} at {r['macs']:,} MACs", flush=True)
    name = f"pareto-{args.preset}{'' if args.budget == 'both' else '-' + args.budget}" \
           f"{'-quick' if args.quick else ''}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    epochs = {b: f"{e} epochs" for b, e in bench.scratch_epochs.items()}
    titles = {b: f"{args.preset}, budget ({b}): {BUDGETS[b].format(**epochs)}; test accuracy, mean ± "
                 f"std over {len(seeds)} seed(s); MACs as % of the dense backbone ({dense:,.0f})"
              for b in budgets}
    (out / f"{name}.json").write_text(json.dumps({"dense_macs": dense, "epochs": bench.scratch_epochs,
                                                  "rows": rows}, indent=2))
    tables = "\n\n".join(summarize([r for r in rows if r["budget"] == b], dense, titles[b])
                          for b in budgets)
    (out / f"{name}.md").write_text(tables + "\n")
    plot(rows, dense, out / f"{name}.png", titles)
    print(tables)
    return rows


if __name__ == "__main__":
    main()
