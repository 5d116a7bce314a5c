"""Prune a small LLaMA-style language model (grouped-query attention) trained on Python's own
documentation text, by this tool's search and by one-shot structured pruning with magnitude,
Taylor and Wanda-sp importance (derive/importance.py), to 20%, 30% and 50% fewer parameters.

    python -m benchmarks.prune_language_model                # seeds 0 1 2, all targets
    python -m benchmarks.prune_language_model --seeds 1      # one part: prune-llama-seed1.json
    python -m benchmarks.prune_language_model --merge        # the parts into prune-llama.{md,json}
    python -m benchmarks.prune_language_model --quick        # tiny epochs, one seed (CI-sized)
    python -m benchmarks.prune_language_model --seeds 0 --methods --tag=-kdmag \
        --variant "kd+mag=search.kd_weight=0.5,model.mask_init_from=magnitude"  # settings of ours

Data: `pydoc` (datasource/text.py), byte-level tokens, windows of 64; the test split is the
text's last 10%, the validation split 10% of the training windows (a fixed draw); nothing
trains on either, and the test set is read once per final model. Per seed, the dense network
(configs/prune_llama_pydoc.yaml's model: 4 layers, hidden 128, 8 query heads on 4 key/value
heads, MLP 384) trains from scratch for --dense-epochs with AdamW and is saved as safetensors.
Ours is `train.py` with that config pointed at it: --search-epochs of search toward the target
(key/value heads with their query heads, MLP widths, whole layers), derivation to within
`derive.tolerance` (3%) of the target's parameter count (the baselines: the largest uniform
fraction at or below it), --finetune-epochs of fine-tuning with distillation from the dense
network.
Each baseline prunes the dense network once (every head group and MLP kept at the same fraction,
as Wanda-sp and FLAP's uniform variant do; calibration: 8 training batches), then fine-tunes
for search + fine-tune epochs with the same recipe and distillation: every pruned network
trains as many epochs as ours. "no fine-tune": a baseline right after pruning, ours right after
its search (whose weight steps are training: its columns are not retraining-free). Torch-
Pruning's own pruners are not run: its index mapping does not finish through grouped-query
attention's `repeat_kv`, and with the attentions opaque to its graph (as this tool builds it) it
would prune the MLP widths only; the magnitude and Taylor baselines score the same groups as
its GroupMagnitudeImportance and GroupTaylorImportance do. Validation and
test perplexity, parameters, MACs (fvcore, per 64-token window) and CPU latency (batch 1, in
alternation with the dense network) of every final model.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]

from maskednas.derive.importance import group_scores, per_weight_scores, prune_to_params
from maskednas.export import load
from maskednas.export.flops import fvcore_report
from maskednas.export.latency import latencies_ms
from maskednas.export.model_source import build_source
from maskednas.pipeline import load_config, run
from maskednas.pipeline.setup import TrainingContext, load_data, seed_everything, select_device
from maskednas.training.losses import cross_entropy

CONFIG = ROOT / "configs" / "prune_llama_pydoc.yaml"
BASELINES = ("magnitude", "taylor", "wanda")
CALIBRATION_BATCHES = 8


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.overrides = [f"search.epochs={args.search_epochs}", f"finetune.epochs={args.finetune_epochs}",
                          "finetune.kd_weight=0.5", "threads=null"]
        self.cfg = load_config(CONFIG, [*self.overrides, "model.checkpoint=dense.safetensors"])
        self.data = load_data(self.cfg)
        self.ctx = TrainingContext(self.cfg, self.data, select_device(self.cfg.device))
        self.space = self.cfg.space_config
        self.example = torch.zeros(1, self.data.image_size, dtype=torch.long)

    def measured(self, model, start: float, **extra) -> dict:
        model = self.ctx.prepare(model)
        val, test = self.ctx.validate(model)["loss"], self.ctx.evaluate(model)["loss"]
        macs, params, _ = fvcore_report(model.cpu(), self.example)
        return {"val_ppl": math.exp(val), "test_ppl": math.exp(test), "macs": macs, "params": params,
                "seconds": time.perf_counter() - start, **extra}

    def dense(self, seed: int, workdir: Path):
        start = time.perf_counter()
        seed_everything(seed)
        model = build_source(self.space.source, self.data.num_classes, 1, hf_config=self.space.hf_config)
        ft = replace(self.cfg.finetune, epochs=self.args.dense_epochs, kd_weight=0.0)
        model = self.ctx.train(model, ft, train_loader=self.ctx.train_loader(seed + 2)).cpu()
        path = workdir / f"dense-{seed}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        return model, path, self.measured(model, start)

    def ours(self, name: str, overrides: list[str], fraction: float, params: float, seed: int,
             checkpoint: Path, workdir: Path):
        start = time.perf_counter()
        cfg = load_config(CONFIG, [*self.overrides, f"model.checkpoint={checkpoint}", f"seed={seed}",
                                   f"search.targets={{params: {{fraction: {fraction}}}}}",
                                   f"derive.target={{params: {params}}}", *overrides])
        run_dir = workdir / f"{name}-{fraction}-{seed}"
        metrics = run(cfg, run_dir, data=self.data, report=lambda line: None)
        model = load(run_dir / "export")  # hf: sources need no trust
        return model, self.measured(model, start, no_finetune_val_ppl=metrics["slimmed_val_perplexity"],
                                    no_finetune_test_ppl=metrics["slimmed_test_perplexity"],
                                    removed_layers=len(model.arch.removed_choices()))

    def baseline(self, score: str, params: float, seed: int, checkpoint: Path, dense):
        from maskednas.supernet.user_model import UserModel
        start = time.perf_counter()
        seed_everything(seed)
        space = replace(self.space, checkpoint=str(checkpoint))
        net = UserModel(space, 1, self.data.num_classes, self.data.image_size)
        batches = [(x.cpu(), y.cpu()) for x, y in
                   itertools.islice(self.ctx.train_loader(seed + 3), CALIBRATION_BATCHES)]
        scores = group_scores(net, per_weight_scores(net, score, batches, cross_entropy))
        model, _ = prune_to_params(net, scores, params)
        pruned = self.measured(copy.deepcopy(model), start)
        ft = replace(self.cfg.finetune, epochs=self.args.search_epochs + self.args.finetune_epochs)
        model = self.ctx.train(model, ft, teacher=self.ctx.prepare(copy.deepcopy(dense)),
                               train_loader=self.ctx.train_loader(seed + 2)).cpu()
        return model, self.measured(model, start, no_finetune_val_ppl=pruned["val_ppl"],
                                    no_finetune_test_ppl=pruned["test_ppl"])


def summarize(rows: list[dict]) -> str:
    def stat(values, fmt):
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{fmt(statistics.mean(values))} ± {fmt(sd)}"

    seeds = sorted({r["seed"] for r in rows})
    lines = [f"LLaMA-style language model (GQA 8/4 heads, 4 layers) on Python's documentation text, "
             f"byte-level; parameters removed as a fraction of the dense model's (mean ± std over "
             f"seeds {seeds}; validation: 10% of the training windows, held out)", "",
             "| params removed | method | val ppl, no fine-tune | val ppl | test ppl | params | "
             "MACs / window | CPU ms b=1 | b=1 / dense |",
             "|---|---|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["fraction"], r["method"]) for r in rows))
    for fraction, method in keys:
        rs = [r for r in rows if (r["fraction"], r["method"]) == (fraction, method)]
        f2 = lambda v: f"{v:.2f}"
        lines.append(f"| {'dense' if fraction == 1 else f'{1 - fraction:.0%}'} | {method} | "
                     f"{stat([r.get('no_finetune_val_ppl') for r in rs], f2)} | "
                     f"{stat([r['val_ppl'] for r in rs], f2)} | {stat([r['test_ppl'] for r in rs], f2)} | "
                     f"{statistics.mean(r['params'] for r in rs) / 1e3:.1f} k | "
                     f"{statistics.mean(r['macs'] for r in rs) / 1e6:.2f} M | "
                     f"{stat([r['ms_b1'] for r in rs], f2)} | "
                     f"{stat([r['ms_b1'] / r['dense_ms_b1'] for r in rs], f2)} |")
    return "\n".join(lines)


def write(rows, args, name: str, part: bool) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    table = summarize(rows)
    (args.out / f"{name}.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))
    if not part:
        (args.out / f"{name}.md").write_text(table + "\n")
    print(table)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.8, 0.7, 0.5],
                   help="parameters kept, as fractions of the dense model's")
    p.add_argument("--dense-epochs", type=int, default=6)
    p.add_argument("--search-epochs", type=int, default=1)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--methods", nargs="*", default=["ours", *BASELINES], choices=["ours", *BASELINES])
    p.add_argument("--variant", action="append", default=[],
                   help="NAME=override,override...: a configuration of ours, run as ours[NAME]")
    p.add_argument("--tag", default="", help="appended to the results' file names")
    p.add_argument("--merge", action="store_true", help="merge the per-seed parts and stop")
    p.add_argument("--quick", action="store_true", help="1 epoch each, one seed, one target")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    name = "prune-llama"
    if args.merge:
        parts = sorted(args.out.glob(f"{name}*-seed*.json"), key=lambda p: (len(p.name), p.name))
        if not parts:
            p.error(f"no {name}*-seed*.json parts in {args.out}: run --seeds N first")
        rows, seen = [], set()
        for part in parts:  # a tagged part adds its variants; its dense row is the seed's own
            for r in json.loads(part.read_text())["rows"]:
                if (r["seed"], r["fraction"], r["method"]) not in seen:
                    seen.add((r["seed"], r["fraction"], r["method"]))
                    rows.append(r)
        order = list(dict.fromkeys(["dense", "ours", *(r["method"] for r in rows if r["method"].startswith("ours[")),
                                    *BASELINES]))
        rows.sort(key=lambda r: (-r["fraction"], order.index(r["method"]), r["seed"]))
        write(rows, args, name, part=False)
        return rows
    if args.quick:
        args.seeds, args.fractions = args.seeds[:1], args.fractions[:1]
        args.dense_epochs = args.search_epochs = args.finetune_epochs = 1
    ours = {"ours": [], **{f"ours[{spec.partition('=')[0]}]": [o for o in spec.partition("=")[2].split(",") if o]
                            for spec in args.variant}}
    bench, rows = Bench(args), []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            dense, checkpoint, dense_result = bench.dense(seed, Path(tmp))
            rows.append({"seed": seed, "fraction": 1.0, "method": "dense", **dense_result})
            models = {"dense": dense}
            for fraction in args.fractions:
                params = fraction * dense_result["params"]
                for method in [*(m for m in ours if m in args.methods or m.startswith("ours[")),
                               *(m for m in BASELINES if m in args.methods)]:
                    model, result = (bench.ours(method, ours[method], fraction, params, seed, checkpoint, Path(tmp))
                                     if method in ours else bench.baseline(method, params, seed, checkpoint, dense))
                    rows.append({"seed": seed, "fraction": fraction, "method": method, **result})
                    models[f"{method}-{fraction}"] = model
                    print(json.dumps(rows[-1]), flush=True)
            x = torch.randint(0, bench.data.num_classes, (1, bench.data.image_size),
                              generator=torch.Generator().manual_seed(seed))
            ms = latencies_ms(models, (), repeats=20 if args.quick else 50, inputs=x)
            for row in rows:
                if row["seed"] == seed:
                    key = "dense" if row["method"] == "dense" else f"{row['method']}-{row['fraction']}"
                    row["ms_b1"], row["dense_ms_b1"] = ms[key], ms["dense"]
    part = not args.quick and len(args.seeds) == 1
    write(rows, args, f"{name}{args.tag}{'-quick' if args.quick else ''}" + (f"-seed{args.seeds[0]}" if part else ""),
          part)
    return rows


if __name__ == "__main__":
    main()
