"""One command: config -> search -> derive -> slim -> fine-tune -> export.

    python train.py                                   # digits, every stage
    python train.py --config configs/cifar10_subset.yaml search.epochs=20
    python train.py --resume runs/<name>              # continue an interrupted run
    python train.py --run runs/<name> --stages derive,finetune,export derive.macs=200000 \
                    --export-name export_200k        # re-derive an earlier search, no new search
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from export import derive, save_export
from export.build import build
from export.architecture import evaluation_architecture
from export.discretize import dense_architecture
from export.latency import latencies_ms
from export.slim import slim
from search.checkpoint import CheckpointError, load_checkpoint
from search.config import (ConfigError, RunConfig, apply_override, from_dict, load_config, to_dict,
                           validate)
from search.finetune import evaluate, finetune, recalibrate_batchnorm
from search.loop import NonFiniteLossError, Searcher, autocast_factory
from search.penalty import Targets
from search.pipeline import (data_meta, load_data, loader, prepare_search, restore_supernet,
                             select_device, seed_everything)
from search.tensorboard_log import SearchLogger

STAGES = ("search", "derive", "finetune", "export")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/digits.yaml", help="YAML config file")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    p.add_argument("--run", metavar="RUN_DIR", help="run later stages on an earlier run's search")
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"comma-separated subset of {','.join(STAGES)}, in that order")
    p.add_argument("--export-name", default="export", help="export folder name inside the run dir")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. search.epochs=10")
    return p.parse_intermixed_args(argv)  # overrides may stand before and after options


def parse_stages(text: str) -> list[str]:
    stages = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage {unknown[0]!r}; stages are {', '.join(STAGES)}")
    if stages != sorted(stages, key=STAGES.index):
        raise ConfigError(f"stages must come in the order {','.join(STAGES)}, got {text}")
    if {"finetune", "export"} & set(stages) and "derive" not in stages:
        raise ConfigError("finetune and export work on a derived model: include 'derive'")
    return stages


def existing_run(args) -> str | None:
    return args.resume or args.run


def resolve_run(args) -> tuple[RunConfig, Path]:
    """A new run from --config, or an existing run's saved config (plus overrides)."""
    existing = existing_run(args)
    if args.resume and args.run:
        raise ConfigError("use either --resume (continue a run) or --run (later stages), not both")
    if existing:
        run_dir = Path(existing)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"{run_dir} is not a run directory: it has no config.yaml")
        data = yaml.safe_load((run_dir / "config.yaml").read_text())
        for assignment in args.overrides:
            apply_override(data, assignment)
        cfg = from_dict(RunConfig, data)
        validate(cfg)
        return cfg, run_dir
    cfg = load_config(args.config, args.overrides)
    name = cfg.name or f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg.name = name
    return cfg, Path(cfg.out_dir) / name


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    stages = parse_stages(args.stages)
    if args.run and "search" in stages:
        raise ConfigError("--run reuses an earlier search: drop 'search' from --stages, "
                          "or use --resume to continue that search")
    cfg, run_dir = resolve_run(args)
    if not existing_run(args) and (run_dir / Searcher.CHECKPOINT).exists():
        raise ConfigError(f"{run_dir} already holds a search; continue it with --resume {run_dir}, "
                          f"re-derive with --run {run_dir}, or pick another name=...")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not args.run:  # a later-stage run keeps the search's config; overrides go to the export
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    data = load_data(cfg)
    logger = None
    if "search" in stages:
        start = time.perf_counter()
        searcher = prepare_search(cfg, run_dir, data, logger_factory=SearchLogger)
        logger = searcher.logger
        if args.resume and searcher.checkpoint_path.is_file():
            searcher.resume()
            print(f"resumed {run_dir} at epoch {searcher.epoch}/{cfg.search.epochs}")
        elif args.resume:
            print(f"{searcher.checkpoint_path} does not exist yet: starting the search from epoch 0")
        search_metrics = searcher.run()
        net, targets = searcher.net, searcher.targets
        print(f"search done in {time.perf_counter() - start:.0f}s: val acc {search_metrics['val_acc']:.3f}, "
              f"MACs of the derived network {search_metrics['discrete_macs']:,.0f} "
              f"(soft expectation {search_metrics['expected_macs']:,.0f})")
    if "derive" not in stages:
        if logger:
            logger.close()
        return {}

    device = select_device(cfg.device)
    if "search" not in stages:
        state = load_checkpoint(run_dir / Searcher.CHECKPOINT, "search", device)
        if state["epoch"] < cfg.search.epochs:
            print(f"warning: the search in {run_dir} stopped at epoch {state['epoch']}/"
                  f"{cfg.search.epochs}; deriving from it anyway", file=sys.stderr)
        net, _, _ = restore_supernet(state, device)
        targets = Targets(**state["targets"])
        search_metrics = state["history"][-1] if state["history"] else {}
    result = derive_and_export(cfg, args, run_dir, data, net, targets.macs, search_metrics,
                               stages, logger)
    if logger:
        logger.hyperparameters(to_dict(cfg), {"test_acc": result["test_acc"],
                                              "macs": result["macs"]})
        logger.close()
    return result


def derive_and_slim(cfg, net, meta, target, probe: torch.Tensor):
    """Derive the architecture, slim the supernet into it, and measure how far the compact
    model is from the hard-masked supernet on a real batch (it should be ~1e-6)."""
    net.eval()
    derivation = derive(net, target, cfg.derive.tolerance, cfg.derive.round_to,
                        cfg.derive.min_channels, meta.mean, meta.std)
    compact = slim(net, derivation).eval()
    with torch.no_grad():
        net.fix(derivation.ops, derivation.keep)
        gap = float((net(probe) - compact(probe)).abs().max())
        net.unfix()
    if cfg.channels_last:
        compact = compact.to(memory_format=torch.channels_last)
    return derivation, compact, gap


def cpu_latencies(models: dict[str, torch.nn.Module], shape: tuple[int, ...]) -> dict[str, float]:
    out = {}
    for batch in (1, 64):
        out.update({f"{name}_b{batch}": ms for name, ms in latencies_ms(models, (batch, *shape)).items()})
    return out


def derive_and_export(cfg, args, run_dir, data, net, search_target, search_metrics, stages, logger):
    seed_everything(cfg.seed)
    start = time.perf_counter()
    device = next(net.parameters()).device
    meta = data_meta(data)
    autocast = autocast_factory(device, cfg.amp)
    test_loader = loader(cfg, data.x_test, data.y_test, meta, device, train=False, seed=0)
    train_loader = loader(cfg, data.x_train, data.y_train, meta, device, train=True, seed=cfg.seed + 2)
    target = cfg.derive.macs if cfg.derive.macs is not None else search_target

    derivation, compact, slim_gap = derive_and_slim(cfg, net, meta, target, next(iter(test_loader))[0])
    recalibrate_batchnorm(compact, train_loader)
    slim_acc = evaluate(compact, test_loader, autocast)["acc"]
    cost = derivation.arch.cost()
    print(f"derived: {cost.macs:,.0f} MACs (target {target or 0:,.0f}), slimmed == hard-masked "
          f"supernet within {slim_gap:.1e}, test acc after BN recalibration {slim_acc:.4f}")
    if cfg.derive.eval_cells:  # DARTS protocol: the genotype in a larger network, from scratch
        arch = evaluation_architecture(derivation.arch, cfg.derive.eval_cells,
                                       cfg.derive.eval_channels)
        compact, cost = build(arch).to(device), arch.cost()
        if cfg.channels_last:
            compact = compact.to(memory_format=torch.channels_last)
        print(f"evaluation network: {len(arch.cells)} cells, {cfg.derive.eval_channels} channels, "
              f"{cost.macs:,.0f} MACs, {cost.params:,.0f} params, trained from scratch")
    if "finetune" in stages:
        train_loader.cutout = cfg.finetune.cutout  # fine-tune batches only, not BN recalibration
        # the soft supernet is the distillation teacher (used when finetune.kd_weight > 0)
        compact = finetune(compact, cfg.finetune, train_loader, teacher=net, autocast=autocast,
                           logger=logger)
    test_metrics = evaluate(compact, test_loader, autocast)

    dense = dense_architecture(net, meta.mean, meta.std)
    dense_cost = dense.cost()
    metrics = {
        "test_acc": test_metrics["acc"], "test_loss": test_metrics["loss"],
        "slimmed_test_acc": slim_acc, "slim_max_abs_diff": slim_gap,
        "macs": cost.macs, "params": cost.params, "target_macs": target,
        "dense_macs": dense_cost.macs, "dense_params": dense_cost.params,
        "search_val_acc": search_metrics.get("val_acc"), "data": asdict(meta),
        "from_scratch": cfg.finetune.from_scratch or bool(cfg.derive.eval_cells),
        "cpu_latency_ms": cpu_latencies({"dense": build(dense), "slim": compact},
                                        (meta.in_channels, meta.input_size, meta.input_size)),
    }
    if "export" in stages:
        metrics = save_export(run_dir / args.export_name, compact.cpu(), to_dict(cfg), metrics)
        if metrics["fvcore_flops"] != cost.macs:
            raise AssertionError(f"analytic MACs {cost.macs} != fvcore {metrics['fvcore_flops']}")
    print_summary(metrics, run_dir, args.export_name if "export" in stages else None,
                  time.perf_counter() - start)
    (run_dir / f"summary-{args.export_name}.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def print_summary(m: dict, run_dir: Path, export_name: str | None, seconds: float) -> None:
    lat = m["cpu_latency_ms"]
    rows = [
        ("", "dense (widest path)", "exported"),
        ("MACs", f"{m['dense_macs']:,}", f"{m['macs']:,} ({m['macs'] / m['dense_macs']:.1%})"),
        ("params", f"{m['dense_params']:,}", f"{m['params']:,} ({m['params'] / m['dense_params']:.1%})"),
        ("CPU latency b=1", f"{lat['dense_b1']:.2f} ms", f"{lat['slim_b1']:.2f} ms "
         f"({lat['dense_b1'] / lat['slim_b1']:.1f}x faster)"),
        ("CPU latency b=64", f"{lat['dense_b64']:.2f} ms", f"{lat['slim_b64']:.2f} ms "
         f"({lat['dense_b64'] / lat['slim_b64']:.1f}x faster)"),
        ("test accuracy", "", f"{m['slimmed_test_acc']:.4f} slimmed -> {m['test_acc']:.4f} fine-tuned"),
    ]
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(r, width)) for r in rows))
    if export_name:
        print(f"exported to {run_dir / export_name} (export.load(...) rebuilds it); "
              f"TensorBoard: tensorboard --logdir {run_dir.parent}")
    print(f"derive + fine-tune + export took {seconds:.0f}s")


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, CheckpointError, NonFiniteLossError, KeyError, ValueError,
            FileNotFoundError) as e:  # the user's input or run: the message says what to do
        sys.exit(f"error: {e}")
