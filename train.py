"""One command: config -> search -> derive -> slim -> fine-tune -> export.

    python train.py                                   # digits, every stage
    python train.py --config configs/cifar10_subset.yaml search.epochs=20
    python train.py --resume runs/<name>              # continue an interrupted run
    python train.py --run runs/<name> --stages derive,finetune,export derive.macs=200000 \
                    --export-name export_200k        # re-derive an earlier search, no new search

This file is the command-line front only (arguments, run directories, error messages); the
stages are the library function `pipeline.run`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from pipeline import STAGES, ConfigError, RunConfig, check_stages, load_config, run, to_dict
from pipeline.config import apply_override, from_dict, validate
from search.checkpoint import CheckpointError
from search.loop import Searcher
from training.losses import NonFiniteLossError


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


def resolve_run(args) -> tuple[RunConfig, Path]:
    """A new run from --config, or an existing run's saved config (plus overrides)."""
    existing = args.resume or args.run
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
    cfg.name = cfg.name or f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg, Path(cfg.out_dir) / cfg.name


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    stages = check_stages([s.strip() for s in args.stages.split(",") if s.strip()])
    if args.run and "search" in stages:
        raise ConfigError("--run reuses an earlier search: drop 'search' from --stages, "
                          "or use --resume to continue that search")
    cfg, run_dir = resolve_run(args)
    if not (args.resume or args.run) and (run_dir / Searcher.CHECKPOINT).exists():
        raise ConfigError(f"{run_dir} already holds a search; continue it with --resume {run_dir}, "
                          f"re-derive with --run {run_dir}, or pick another name=...")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not args.run:  # a later-stage run keeps the search's config; overrides go to the export
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return run(cfg, run_dir, stages, resume=bool(args.resume), export_name=args.export_name)


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, CheckpointError, NonFiniteLossError, KeyError, ValueError,
            FileNotFoundError) as e:  # the user's input or run: the message says what to do
        sys.exit(f"error: {e}")
