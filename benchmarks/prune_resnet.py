"""Prune a trained CIFAR ResNet (the user's own module) by this tool and by Torch-Pruning's
magnitude, Taylor and BN-scale pruners (and L1 filter pruning), at the same MACs, fine-tuned alike.

    python -m benchmarks.prune_resnet                    # ResNet-20, 50/25/12%, seeds 0 1 2
    python -m benchmarks.prune_resnet --seeds 1          # one part: writes ...-seed1.json
    python -m benchmarks.prune_resnet --merge            # the parts into prune-resnet20.{md,json}
    python -m benchmarks.prune_resnet --depth 56         # ResNet-56
    python -m benchmarks.prune_resnet --quick            # tiny epochs, one seed (CI-sized)
    python -m benchmarks.prune_resnet --cost latency --methods ours tp_magnitude  # equal latency
    python -m benchmarks.prune_resnet --variant kd=search.kd_weight=0.5 ...  # settings of ours

Held-out protocol: 10% of ../shared/data/cifar10_subset.npz's training images (a fixed draw,
`data.validation_fraction`) are the validation split; nothing trains on them, every setting of
ours is chosen on them, and the test set is read once per final model for the report.

Per seed: the dense network trains on the rest for --dense-epochs and is saved as safetensors.
Ours is `train.py` with configs/prune_cifar_resnet20.yaml pointed at that checkpoint:
--search-epochs of search (weights, masks, keep/skip per block), derive, slim, fine-tune with
distillation from the dense network; "ours, penalty only" is the same with the loss's gradient
to the architecture zeroed (`search.arch_loss_weight=0`). Each baseline prunes the dense network
to the target with Torch-Pruning (stepped until fvcore's MACs reach it; Taylor's gradients from
two training batches before every step), then fine-tunes with the same recipe and distillation
for search + fine-tune epochs: every pruned network trains as many epochs as ours. Validation
and test accuracy, fvcore MACs and params, CPU latency (batch 1 and 64, medians in alternation)
of every final model, and for ours how the search decided (blocks flipped per epoch, spread of
the keep-skip margins after the first epoch, the loss's and the penalty's gradient norms).

--cost latency: the targets are fractions of the dense network's latency (batch 1, `latency.*`
defaults: torch eager on the CPU). Ours searches with `search.targets.latency_ms.fraction` and is
aimed by measurement as every run is; each baseline is then pruned to MACs aims re-tuned
(latency/aim.py) until its latency over the dense network's, timed alongside, is within 5% of
what ours measured. So the accuracy columns compare networks of equal measured latency. Writes
prune-resnet<depth>-latency*.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.cifar_resnet import CifarResNet
from maskednas.derive.baselines import torch_pruning_to_measurement, torch_pruning_to_target
from maskednas.export import load
from maskednas.export.flops import fvcore_report
from maskednas.export.latency import latencies_ms
from maskednas.latency.measure import models_ms
from maskednas.pipeline import load_config, run
from maskednas.pipeline.setup import TrainingContext, load_data, seed_everything, select_device

DATA = f"data.path={ROOT.parent / 'shared' / 'data' / 'cifar10_subset.npz'}"


@dataclass(frozen=True)
class Network:
    """What the benchmark prunes: a user's module, the config ours runs with, and how the dense
    network is trained from scratch (fine-tune settings over the config's)."""
    title: str
    results: str  # the results' file name stem
    source: str
    config: Path
    build: Callable[[], torch.nn.Module]
    dense_recipe: dict = field(default_factory=lambda: {"lr": 0.1})


def resnet(depth: int) -> Network:
    return Network(f"ResNet-{depth}", f"prune-resnet{depth}", f"benchmarks.cifar_resnet:resnet{depth}",
                   ROOT / "configs" / "prune_cifar_resnet20.yaml", lambda: CifarResNet(depth))


def baselines():
    import torch_pruning as tp
    imp = tp.importance
    return {  # name -> (importance, global ranking)
        "tp_magnitude": (imp.GroupMagnitudeImportance(p=2), True),
        "tp_taylor": (imp.GroupTaylorImportance(), True),
        "tp_bn_scale": (imp.BNScaleImportance(), True),
        "l1_filter": (imp.MagnitudeImportance(p=1, group_reduction="first"), False),
    }


class Bench:
    def __init__(self, args, network: Network) -> None:
        self.args, self.network = args, network
        self.overrides = [DATA, f"model.source={network.source}",
                          f"search.epochs={args.search_epochs}",
                          f"finetune.epochs={args.finetune_epochs}", "threads=null"]
        # the shared settings (data, fine-tune recipe with its distillation); each run of ours
        # names the seed's trained checkpoint
        self.cfg = load_config(network.config, [*self.overrides, "model.checkpoint=dense.safetensors"])
        self.data = load_data(self.cfg)
        self.device = select_device(self.cfg.device)
        self.ctx = TrainingContext(self.cfg, self.data, self.device)
        self.example = torch.zeros(1, 3, 32, 32)
        self.tables = ROOT / "runs" / "prune-resnet-latency-tables"  # shared by the seeds' parts

    def latencies_ms(self, models: dict) -> dict[str, float]:
        """The models timed in alternation as a run's latency check times them (`latency.*`)."""
        lat = self.cfg.latency
        return models_ms(models, (3, 32, 32), select_device(lat.device), lat.runtime, lat.batch,
                         self.cfg.channels_last)

    def latency_fraction(self, model, dense) -> float:
        """`model`'s latency over `dense`'s, timed alongside."""
        ms = self.latencies_ms({"pruned": model, "dense": dense})
        return ms["pruned"] / ms["dense"]

    def measured(self, model, start: float, **extra) -> dict:
        model = self.ctx.prepare(model)
        val, test = self.ctx.validate(model)["acc"], self.ctx.evaluate(model)["acc"]
        macs, params, _ = fvcore_report(model.cpu(), self.example)
        return {"val_acc": val, "test_acc": test, "macs": macs, "params": params,
                "seconds": time.perf_counter() - start, **extra}

    def dense(self, seed: int, workdir: Path) -> tuple[torch.nn.Module, Path, dict]:
        start = time.perf_counter()
        seed_everything(seed)
        model = self.network.build()
        ft = replace(self.cfg.finetune, epochs=self.args.dense_epochs, kd_weight=0.0,
                     **self.network.dense_recipe)
        model = self.ctx.train(model, ft, train_loader=self.ctx.train_loader(seed + 2)).cpu()
        path = workdir / f"dense-{seed}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        return model, path, self.measured(model, start)

    def ours(self, name: str, overrides: list[str], fraction: float, target: float, seed: int,
             checkpoint: Path, workdir: Path) -> tuple:
        start = time.perf_counter()
        targets = ([f"search.targets.macs.value={target}", "search.targets.macs.fraction=null"]
                   if self.args.cost == "macs" else
                   [f"search.targets={{latency_ms: {{fraction: {fraction}}}}}", f"latency.cache_dir={self.tables}"])
        cfg = load_config(self.network.config, [*self.overrides, f"model.checkpoint={checkpoint}", f"seed={seed}",
                                   *targets, *overrides])
        run_dir = workdir / f"{name}-{fraction}-{seed}"
        run(cfg, run_dir, data=self.data, report=lambda line: None)
        model = load(run_dir / "export", trust_source=True)  # this benchmark's own network
        history = torch.load(run_dir / "search.pt", weights_only=False)["history"]
        return model, self.measured(model, start, removed_blocks=len(model.arch.removed_choices()),
                                    search=decision_figures(history))

    def taylor_gradients(self, seed: int):
        """Taylor importance reads weight x gradient: the gradients of two training batches."""
        batches = list(itertools.islice(self.ctx.train_loader(seed + 3), 2))

        def before_step(model):
            model.zero_grad(set_to_none=True)
            for x, y in batches:  # in eval mode: the dense network's BatchNorm statistics stay
                torch.nn.functional.cross_entropy(model(x.cpu()), y.cpu()).backward()
        return before_step

    def baseline(self, name: str, target: float, seed: int, dense, latency_goal: float | None) -> tuple:
        """Pruned to `target` MACs or, given `latency_goal`, to that fraction of the dense
        network's measured latency; then trained as long as ours, distilled alike."""
        start = time.perf_counter()
        importance, global_ranking = baselines()[name]
        before_step = self.taylor_gradients(seed) if name == "tp_taylor" else None
        extra = {}
        if latency_goal is None:
            model = torch_pruning_to_target(copy.deepcopy(dense).eval(), self.example, target,
                                            importance, global_ranking, before_step=before_step)
        else:
            aimed = torch_pruning_to_measurement(dense.eval(), self.example, latency_goal,
                                                 lambda m: self.latency_fraction(m, dense), importance,
                                                 global_ranking, before_step=before_step)
            tries = [{"aim_macs": t["aim_ms"], "measured_fraction": t["measured_fraction"]} for t in aimed.tries]
            model, extra = aimed.derivation, {"latency_goal": latency_goal, "latency_tries": tries,
                                              "latency_fraction": aimed.measured_fraction}
        model.zero_grad(set_to_none=True)
        seed_everything(seed)
        epochs = self.args.search_epochs + self.args.finetune_epochs
        ft = replace(self.cfg.finetune, epochs=epochs)
        model = self.ctx.train(model, ft, teacher=self.ctx.prepare(copy.deepcopy(dense)),
                               train_loader=self.ctx.train_loader(seed + 2)).cpu()
        return model, self.measured(model, start, **extra)


def model_key(row: dict) -> str:
    """The name a row's final model is timed under."""
    return "dense" if row["method"] == "dense" else f"{row['method']}-{row['fraction']}"


def decision_figures(history: list[dict]) -> dict:
    """How the search decided, from its epochs' metrics: blocks and channels flipped per epoch,
    the spread of the keep-skip margins after the first epoch, the gradient norms' means."""
    norms = {k for m in history for k in m if k.startswith("grad_norm/")}
    searched = [m for m in history if "grad_norm/loss" in m]  # epochs with architecture steps
    return {"decisions_flipped": [m.get("decisions_flipped") for m in history],
            "channels_flipped": [m.get("channels_flipped") for m in history],
            "margin_std_after_first_epoch": searched[0]["decision_margin_std"] if searched else float("nan"),
            **{k: statistics.mean(m[k] for m in history if k in m) for k in sorted(norms)}}


def summarize(rows: list[dict], title: str, cost: str) -> str:
    def stat(values, fmt):
        return fmt.format(statistics.mean(values)) + (
            f" ± {fmt.format(statistics.stdev(values))}" if len(values) > 1 else "")
    of = "MACs" if cost == "macs" else "latency"
    by_latency = cost == "latency"
    lines = [f"{title} on the CIFAR-10 subset, targets as fractions of the dense network's "
             f"{of} (mean ± std over seeds {sorted({r['seed'] for r in rows})}; validation: 10% of "
             f"the training images, held out)", "",
             "| target | method | val acc (%) | test acc (%) | MACs | params | CPU ms b=1 "
             "| b=1 / dense | CPU ms b=64 |" + (" latency / dense: tuned | final |" if by_latency else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if by_latency else "")]
    keys = list(dict.fromkeys((r["fraction"], r["method"]) for r in rows))
    for fraction, method in keys:
        group = [r for r in rows if (r["fraction"], r["method"]) == (fraction, method)]
        lines.append(
            f"| {'dense' if fraction == 1 else f'{fraction:.1%}'.replace('.0%', '%')} | {method} | "
            f"{stat([100 * r['val_acc'] for r in group], '{:.2f}')} | "
            f"{stat([100 * r['test_acc'] for r in group], '{:.2f}')} | "
            f"{statistics.mean(r['macs'] for r in group) / 1e6:.2f} M | "
            f"{statistics.mean(r['params'] for r in group) / 1e3:.1f} k | "
            f"{stat([r['ms_b1'] for r in group], '{:.2f}')} | "
            f"{stat([r['ms_b1'] / r['dense_ms_b1'] for r in group], '{:.2f}')} | "
            f"{stat([r['ms_b64'] for r in group], '{:.1f}')} |" + (
                f" {stat([r.get('latency_fraction', 1.0) for r in group], '{:.3f}')} | "
                f"{stat([r['final_latency_fraction'] for r in group], '{:.3f}')} |" if by_latency else ""))
    searches = [r for r in rows if r.get("search")]
    if searches:
        lines += ["", "How each search of ours decided (per run: keep/skip decisions flipped in each "
                  "epoch; std of the keep-skip margins after the first epoch; mean gradient norms "
                  "of the loss and the penalty on the keep/skip and mask logits)", "",
                  "| target | method | seed | flips per epoch | margin std | loss: keep/skip, masks "
                  "| penalty: keep/skip, masks |", "|---|---|---|---|---|---|---|"]
        for r in searches:
            d = r["search"]
            g = lambda part, kind: d.get(f"grad_norm/{part}/{kind}", float("nan"))
            lines.append(f"| {r['fraction']:.1%} | {r['method']} | {r['seed']} | "
                         f"{' '.join(str(f) for f in d['decisions_flipped'])} | "
                         f"{d['margin_std_after_first_epoch']:.3f} | "
                         f"{g('loss', 'op_logits'):.2e}, {g('loss', 'mask_logits'):.2e} | "
                         f"{g('penalty', 'op_logits'):.2e}, {g('penalty', 'mask_logits'):.2e} |")
    return "\n".join(lines)


def write(rows: list[dict], args, name: str, title: str, part: bool = False) -> None:
    """The rows as JSON and, unless this is one part of a merge, the table as markdown."""
    args.out.mkdir(parents=True, exist_ok=True)
    table = summarize(rows, title, args.cost)
    (args.out / f"{name}.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                      "rows": rows}, indent=2))
    if not part:
        (args.out / f"{name}.md").write_text(table + "\n")
    print(table)


def variants(args) -> dict[str, list[str]]:
    """Name -> overrides of each configuration of ours this run compares."""
    out = {"ours": [], "ours, penalty only": ["search.arch_loss_weight=0"]}
    for spec in args.variant:
        name, _, overrides = spec.partition("=")
        out[f"ours[{name}]"] = [o for o in overrides.split(",") if o]
    return {k: v for k, v in out.items() if k in args.methods or k.startswith("ours[")}


def main(argv=None, network: Network | None = None, doc: str = __doc__, **defaults) -> list[dict]:
    """The benchmark on `network` (None: the CIFAR ResNet of --depth), its arguments' `defaults`
    replaced."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if network is None:
        p.add_argument("--depth", type=int, default=20)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.25, 0.125])
    p.add_argument("--dense-epochs", type=int, default=30)
    p.add_argument("--search-epochs", type=int, default=6)
    p.add_argument("--finetune-epochs", type=int, default=15)
    p.add_argument("--methods", nargs="+", default=["ours", "ours, penalty only", *baselines()],
                   help="of: ours, 'ours, penalty only', " + ", ".join(baselines()))
    p.add_argument("--variant", action="append", default=[],
                   help="NAME=override,override: another configuration of ours, as ours[NAME] "
                        "(search, model, derive and finetune keys: every run shares the data)")
    p.add_argument("--tag", default="", help="appended to the results' file names")
    p.add_argument("--merge", action="store_true", help="merge the per-seed parts and stop")
    p.add_argument("--quick", action="store_true", help="1 epoch each, one seed, one target")
    p.add_argument("--cost", choices=["macs", "latency"], default="macs",
                   help="what --fractions are fractions of (latency: measured at batch 1, see above)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.set_defaults(**defaults)
    args = p.parse_args(argv)
    network = network or resnet(args.depth)
    base = f"{network.results}{'-latency' if args.cost == 'latency' else ''}{args.tag}"
    if args.merge:  # every part of this depth, cost and tag (a part with a longer tag adds methods)
        parts = sorted(args.out.glob(f"{base}*-seed*.json"), key=lambda p: (len(p.name), p.name))
        if not parts:
            p.error(f"no {base}*-seed*.json parts in {args.out}: run --seeds N first")
        rows, seen = [], set()
        for part in parts:
            part_rows = json.loads(part.read_text())["rows"]
            for r in part_rows:  # a speed-up only against the dense network timed in the same process
                r.setdefault("dense_ms_b1", next(d["ms_b1"] for d in part_rows
                                                 if d["method"] == "dense" and d["seed"] == r["seed"]))
                # every part trains its own dense network from the seed (not bitwise the same
                # across processes); the dense line shows the first part's of each seed
                key = (r["seed"], r["fraction"], r["method"])
                if r.get("cost", "macs") != args.cost:
                    continue
                if key in seen and args.cost == "latency" and r["method"] != "dense":
                    p.error(f"{part.name} repeats {key}: at equal latency a baseline belongs with the "
                            "ours of its own part; merge parts of different seeds or methods")
                if key not in seen:
                    seen.add(key)
                    rows.append(r)
        order = list(dict.fromkeys(r["method"] for r in rows))
        rows.sort(key=lambda r: (-r["fraction"], order.index(r["method"]), r["seed"]))
        write(rows, args, base, network.title)
        return rows
    if args.quick:
        args.seeds, args.fractions = args.seeds[:1], args.fractions[:1]
        args.dense_epochs = args.search_epochs = args.finetune_epochs = 1
    ours = variants(args)
    if args.cost == "latency" and not ours:
        p.error("--cost latency tunes each baseline to the latency ours measures: name ours in --methods")
    bench, rows = Bench(args, network), []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            dense, checkpoint, dense_result = bench.dense(seed, Path(tmp))
            models = {"dense": dense}
            rows.append({"seed": seed, "fraction": 1.0, "method": "dense", "cost": args.cost, **dense_result})
            for fraction in args.fractions:
                target = fraction * dense_result["macs"]
                runs = {name: (lambda n=name, o=ov: bench.ours(n, o, fraction, target, seed, checkpoint,
                                                               Path(tmp)))
                        for name, ov in ours.items()}
                # at equal latency the baselines are tuned to what ours (the first configuration) measured
                goal = {}
                runs.update({name: (lambda n=name: bench.baseline(n, target, seed, dense, goal.get("fraction")))
                             for name in baselines() if name in args.methods})
                for method, go in runs.items():
                    model, result = go()
                    if args.cost == "latency" and not goal and method.startswith("ours"):
                        goal["fraction"] = result["latency_fraction"] = bench.latency_fraction(model, dense)
                    rows.append({"seed": seed, "fraction": fraction, "method": method, "cost": args.cost,
                                 **result})
                    models[model_key(rows[-1])] = model
                    print(json.dumps(rows[-1]), flush=True)
            seed_rows = [row for row in rows if row["seed"] == seed]
            if args.cost == "latency":  # every final model as the tuning timed them, all alternated
                ms = bench.latencies_ms(models)
                for row in seed_rows:
                    row["final_latency_fraction"] = ms[model_key(row)] / ms["dense"]
            for batch in (1, 64):
                ms = latencies_ms(models, (batch, 3, 32, 32), repeats=20 if args.quick else 50)
                for row in seed_rows:
                    row[f"ms_b{batch}"], row[f"dense_ms_b{batch}"] = ms[model_key(row)], ms["dense"]
    part = not args.quick and len(args.seeds) == 1
    write(rows, args, f"{base}{'-quick' if args.quick else ''}" + (f"-seed{args.seeds[0]}" if part else ""),
          network.title, part)
    return rows


if __name__ == "__main__":
    main()
