"""The `maskednas` command: one subcommand per job, each working from any directory.

    maskednas run                                    # digits, every stage (= python train.py)
    maskednas run --config cifar10_subset search.epochs=20   # a shipped config, or a YAML path
    maskednas run --resume runs/<name>               # continue an interrupted run
    maskednas run --run runs/<name> --stages derive,finetune,export derive.target.macs=200000 \\
                  --export-name export_200k          # re-derive an earlier search, no new search
    torchrun --nproc_per_node=2 train.py ...         # the same run over 2 processes (or GPUs)
    maskednas front                                  # one supernet, a subnet per budget (sandwich rule)
    maskednas front --run runs/<name> front.strategy=bayesian  # the front again, on a trained supernet
    maskednas latency --config digits latency.batch=1    # measure (or find) a latency table
    maskednas inspect runs/<name>/export             # an export's architecture, cost and metrics
    maskednas configs                                # the shipped configs

This module is the command-line front only (arguments, run directories, error messages); the
stages are the library function `maskednas.run`. Every check runs before anything is written:
a command that fails leaves no folder and changes no file. Under torchrun every rank runs
the command; rank 0 checks what one process checks for all and alone writes.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

import torch
import yaml

from maskednas import parallel
from maskednas.common import atomic_write
from maskednas.common.run_lock import RunLock
from maskednas.pipeline import STAGES, ConfigError, RunConfig, check_stages, load_config, run, to_dict
from maskednas.pipeline.config import (LATER_STAGES_MAY_CHANGE, RESUME_MAY_CHANGE, apply_override,
                                       check_changes, from_dict, is_plain_name, plain_name_error, read_yaml,
                                       shipped_configs, upgrade_moved_keys, validate)
from maskednas.export.inspect import check_export, describe_export
from maskednas.pipeline.setup import (apply_threads, build_supernet, check_ranks, check_same_data,
                                      data_meta, latency_model, load_data, preflight, select_device)
from maskednas.search.checkpoint import load_checkpoint
from maskednas.pipeline.front import check_front, front
from maskednas.pipeline.stages import load_search, search
from maskednas.search.loop import Searcher
from maskednas.search.tensorboard_log import SearchLogger


RUN_HELP = """Search, derive, slim, fine-tune and export, as the config says.

    maskednas run                                      # digits, every stage
    maskednas run --config cifar10_subset search.epochs=20
    maskednas run --resume runs/<name>                 # continue an interrupted run
    maskednas run --run runs/<name> --stages derive,finetune,export derive.target.macs=200000 \\
                  --export-name export_200k            # re-derive an earlier search
    torchrun --nproc_per_node=2 train.py ...           # the same run over 2 processes (or GPUs)
    torchrun --nproc_per_node=2 train.py --from-run runs/<name> --stages derive,finetune,export
"""


def parse_args(argv: list[str], prog: str = "maskednas run") -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=RUN_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None,
                   help="a shipped config's name (see `maskednas configs`) or a YAML file (default: "
                        "digits, or prune_model when an override sets model.*)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    p.add_argument("--run", "--from-run", metavar="RUN_DIR", dest="run",
                   help="run later stages on an earlier run's search (under torchrun: --from-run, "
                        "which torchrun does not take for its own --run-path)")
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"comma-separated subset of {','.join(STAGES)}, in that order")
    p.add_argument("--export-name", default="export", help="export folder name inside the run dir")
    p.add_argument("--accept-changed-data", action="store_true",
                   help="with --resume: continue the search although its data changed since it started")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. search.epochs=10")
    args = p.parse_intermixed_args(argv)  # overrides may stand before and after options
    args.config = args.config or default_config(args.overrides)
    return args


def default_config(overrides: list[str]) -> str:
    """digits, or prune_model when an override sets model.* (`model.source=...` alone means:
    prune that network)."""
    return "prune_model" if any(o.split("=", 1)[0].startswith("model.") for o in overrides) else "digits"


def resolve_run(args) -> tuple[RunConfig, Path]:
    """A new run from --config, or an existing run's saved config plus the overrides it may
    take (see pipeline.config: RESUME_MAY_CHANGE, LATER_STAGES_MAY_CHANGE)."""
    existing = args.resume or args.run
    if args.resume and args.run:
        raise ConfigError("use either --resume (continue a run) or --run (later stages), not both")
    if not existing:
        cfg = load_config(args.config, args.overrides)
        cfg.name = cfg.name or f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        return cfg, Path(cfg.out_dir) / cfg.name
    run_dir = Path(existing)
    if not (run_dir / "config.yaml").is_file():
        runs = sorted(p.parent.name for p in run_dir.parent.glob("*/config.yaml") if p.parent != run_dir) \
            if run_dir.parent.is_dir() else []
        known = (f"runs in {run_dir.parent}: {', '.join(runs[:10])}" + (" ..." if len(runs) > 10 else "")
                 if runs else f"{run_dir.parent} holds no runs")
        what = (f"no run {run_dir.name!r} exists" if not run_dir.exists() else
                f"{run_dir} is not a run directory (it has no config.yaml: a run that failed "
                f"before it started writes none)")
        raise ConfigError(f"{what}; {known}")
    data = read_yaml(run_dir / "config.yaml")
    moved = upgrade_moved_keys(data)
    if moved:
        print(f"note: {run_dir}/config.yaml has the earlier target keys; read as {', '.join(moved)}",
              file=sys.stderr)
    before = from_dict(RunConfig, data)
    checkpoint = run_dir / Searcher.CHECKPOINT
    if checkpoint.is_file():  # the config the search really ran with
        saved = load_checkpoint(checkpoint, "search")["config"]
        upgrade_moved_keys(saved)
        before = from_dict(RunConfig, saved)
    elif args.run:
        raise ConfigError(f"{run_dir} has no search checkpoint ({checkpoint.name}) to derive from; "
                          f"finish its search with --resume {run_dir}")
    for assignment in args.overrides:
        apply_override(data, assignment)
    cfg = from_dict(RunConfig, data)
    validate(cfg)
    mode, allowed = (("--resume", RESUME_MAY_CHANGE) if args.resume
                     else ("--run", LATER_STAGES_MAY_CHANGE))
    check_changes(before, cfg, allowed, mode)
    return cfg, run_dir


def run_command(argv: list[str], prog: str = "maskednas run") -> dict:
    """`maskednas run ARGS` (and `python train.py ARGS`): a run's stages; returns its metrics."""
    args = parse_args(argv, prog)
    stages = check_stages([s.strip() for s in args.stages.split(",") if s.strip()])
    if not is_plain_name(args.export_name):
        raise ConfigError(plain_name_error("--export-name", args.export_name))
    if args.accept_changed_data and not args.resume:
        raise ConfigError("--accept-changed-data applies to --resume only (a new run or --run "
                          "reads the data as it is)")
    if args.run and "search" in stages:
        raise ConfigError("--run reuses an earlier search: drop 'search' from --stages, "
                          "or use --resume to continue that search")
    cfg, run_dir = resolve_run(args)
    if parallel.launched_rank() == 0:  # a live run of this name: refused before any work
        RunLock.ensure_free(run_dir)
    device = select_device(cfg.device)
    parallel.start(device)
    if not parallel.is_main():  # libraries' warnings (timm's scheduler) once, from rank 0
        logging.getLogger().setLevel(logging.ERROR)
    try:
        cfg.name, run_dir = parallel.broadcast((cfg.name, run_dir))  # rank 0's clock names it
        check_ranks(cfg, device)
        if not (args.resume or args.run) and (run_dir / Searcher.CHECKPOINT).exists():
            raise ConfigError(f"{run_dir} already holds a search; continue it with --resume "
                              f"{run_dir}, re-derive with --run {run_dir}, or pick another name=...")
        with parallel.main_first():  # rank 0 downloads, if anything
            data = load_data(cfg)  # every split checked
        if (args.resume or args.run) and (run_dir / Searcher.CHECKPOINT).is_file():
            check_same_data(load_checkpoint(run_dir / Searcher.CHECKPOINT, "search"), data, cfg,
                            run_dir, contents=bool(args.resume) and not args.accept_changed_data)
        if "search" in stages:  # the supernet and its targets (a resumed run: its latency table)
            parallel.on_main(lambda: preflight(cfg, data, run_dir if args.resume else None))
        with contextlib.ExitStack() as held:
            parallel.on_main(lambda: claim(run_dir, held, new_run=not (args.resume or args.run)))
            if parallel.is_main() and not args.run:  # a later-stage run keeps the search's config
                atomic_write(run_dir / "config.yaml",
                             lambda tmp: Path(tmp).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False)))
            return run(cfg, run_dir, stages, resume=bool(args.resume), export_name=args.export_name,
                       data=data)
    finally:
        parallel.stop()


FRONT_HELP = """Train one supernet for every budget (search.strategy=sandwich: the largest, the
smallest and random subnets each step), search its Pareto front of validation accuracy against
cost (front.strategy: evolution, bayesian or random, by Optuna), and export the best subnet per
budget (front.budgets) as runs/<name>/front-<objective>-<fraction>; front.md/.json/.png hold the front.

    maskednas front                                     # digits, the macro space
    maskednas front model.source=torchvision:resnet18 model.checkpoint=net.safetensors
    maskednas front --run runs/<name> front.strategy=bayesian front.trials=200
    maskednas front --resume runs/<name>                # continue an interrupted training
"""


def front_command(argv: list[str], prog: str = "maskednas front") -> dict:
    """`maskednas front ARGS`: train a supernet with the sandwich rule (or take a trained one,
    --run) and export its front; returns what front.json holds."""
    p = argparse.ArgumentParser(prog=prog, description=FRONT_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None,
                   help="a shipped config's name or a YAML file (default: digits, or prune_model "
                        "when an override sets model.*)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted training, then the front")
    p.add_argument("--run", metavar="RUN_DIR", help="search the front of an earlier run's supernet")
    p.add_argument("--accept-changed-data", action="store_true",
                   help="with --resume: continue the training although its data changed")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. front.trials=200")
    args = p.parse_intermixed_args(argv)
    if parallel.launched():
        raise ConfigError("maskednas front runs in one process (the sandwich rule runs several "
                          "subnets per step); run it without torchrun")
    if args.accept_changed_data and not args.resume:
        raise ConfigError("--accept-changed-data applies to --resume only")
    args.config = args.config or default_config(args.overrides)
    if not (args.resume or args.run):  # the config's own search becomes the sandwich rule's
        own_targets = any(o.startswith("search.targets") for o in args.overrides)  # then refused
        args.overrides = ["search.strategy=sandwich", *([] if own_targets else ["search.targets={}"]),
                          *args.overrides]
    cfg, run_dir = resolve_run(args)
    RunLock.ensure_free(run_dir)
    if not (args.resume or args.run) and (run_dir / Searcher.CHECKPOINT).exists():
        raise ConfigError(f"{run_dir} already holds a search; continue it with --resume {run_dir}, "
                          f"search its front again with --run {run_dir}, or pick another name=...")
    data = load_data(cfg)
    if (args.resume or args.run) and (run_dir / Searcher.CHECKPOINT).is_file():
        check_same_data(load_checkpoint(run_dir / Searcher.CHECKPOINT, "search"), data, cfg, run_dir,
                        contents=bool(args.resume) and not args.accept_changed_data)
    if not args.run:
        preflight(cfg, data, run_dir if args.resume else None)
    check_front(cfg, data)
    with contextlib.ExitStack() as held:
        claim(run_dir, held, new_run=not (args.resume or args.run))
        if not args.run:
            atomic_write(run_dir / "config.yaml",
                         lambda tmp: Path(tmp).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False)))
        apply_threads(cfg)
        if args.run:
            searched = load_search(cfg, run_dir)
            logger = SearchLogger(run_dir, searched.net, {})
        else:
            searched = search(cfg, run_dir, data, resume=bool(args.resume))
            logger = searched.logger
        held.callback(logger.close)
        return front(cfg, run_dir, data, searched, logger)


def claim(run_dir: Path, held: contextlib.ExitStack, new_run: bool) -> None:
    """Rank 0 makes the run folder and holds its lock (`RunLock`) until the command ends; a new
    run checks again, under the lock, that no search of that name appeared meanwhile."""
    run_dir.mkdir(parents=True, exist_ok=True)
    held.enter_context(RunLock(run_dir))
    if new_run and (run_dir / Searcher.CHECKPOINT).exists():
        raise ConfigError(f"{run_dir} already holds a search; continue it with --resume "
                          f"{run_dir}, re-derive with --run {run_dir}, or pick another name=...")


def one_line(e: BaseException) -> str:
    """The error's own message on one line (a KeyError's without its quotes)."""
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(text).split()) or type(e).__name__


def rank_prefix() -> str:
    """'rank N: ' under torchrun, where every rank prints its own failure; else nothing."""
    return f"rank {parallel.launched_rank()}: " if parallel.launched() else ""


def error_line(e: BaseException) -> str:
    """What a failed command prints: the error in one line (under torchrun, with the rank)."""
    if parallel.launched() and parallel.peer_lost(e):
        return (f"error: rank {parallel.launched_rank()} lost contact with another rank, which "
                f"died or was stopped (torchrun's report below names it): "
                f"{one_line(e).split(' This is typically')[0]} "
                f"The last epoch's checkpoint is kept; continue with --resume <run dir>")
    ours = isinstance(e, (ValueError, KeyError, OSError, RuntimeError))
    text = (one_line(e) if ours else
            f"{type(e).__name__}: {one_line(e)} (rerun with --debug for the traceback)")
    return f"error: {rank_prefix()}{text}"


def stop_on_sigterm(signum, frame) -> None:
    """torchrun ends the other ranks with SIGTERM when one fails: stop as on Ctrl-C, so that a
    checkpoint being written is abandoned cleanly (the last complete one stays). torchrun
    signals twice (the process, its group) and kills after its timeout: later signals are
    ignored, so that the cleanup runs once."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def latency_command(argv: list[str], prog: str = "maskednas latency") -> None:
    """Build (or find in the cache) the latency table of a config's search space, on the device
    and runtime its `latency` section names, and print what it predicts. A table measured on the
    machine the model will run on (`--out`) can be given to a search on another machine with
    `latency.table=gpu_table.json`."""
    p = argparse.ArgumentParser(prog=prog, description=latency_command.__doc__)
    p.add_argument("--config", default="digits", help="a shipped config's name or a YAML file")
    p.add_argument("--out", help="also write the table to this file")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. latency.batch=8")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    apply_threads(cfg)
    net = build_supernet(cfg, data_meta(load_data(cfg)), torch.device("cpu"))
    start = time.perf_counter()
    model = latency_model(cfg, net, always=True)
    m = model.meta
    print(f"{len(model.parts)} parts, {m['device']}, {m['runtime']}, batch {m['batch']}, "
          f"{m['threads']} thread(s) ({time.perf_counter() - start:.1f}s)")
    print(f"dense network {model.dense_ms():.4g} ms; fastest reachable "
          f"{model.fastest_ms(cfg.derive.min_channels):.4g} ms (table predictions)")
    if args.out:
        model.table.save(Path(args.out))
        print(f"written to {args.out}")


def inspect_command(argv: list[str], prog: str = "maskednas inspect") -> None:
    """Print an export's architecture, cost and metrics. Reads arch.json and metrics.json after
    checking them against the manifest; builds nothing. With --check, also rebuilds the network,
    loads its weights and recounts its cost with fvcore; an export of a user's own network
    (source package.module:function) is rebuilt only with --trust-source, because rebuilding
    it imports and runs that module."""
    p = argparse.ArgumentParser(prog=prog, description=inspect_command.__doc__)
    p.add_argument("export", help="an export folder (runs/<name>/export)")
    p.add_argument("--check", action="store_true",
                   help="rebuild the network, load the weights and recount MACs and params")
    p.add_argument("--trust-source", action="store_true",
                   help="with --check: allow building any user-factory source")
    p.add_argument("--trust-package", action="append", default=[], metavar="PACKAGE",
                   help="with --check: allow the sources in PACKAGE (and its subpackages) only; "
                        "repeat for more")
    args = p.parse_args(argv)
    if (args.trust_source or args.trust_package) and not args.check:
        raise ValueError("--trust-source and --trust-package apply to --check only (inspecting "
                         "builds nothing)")
    print(describe_export(args.export))
    if args.check:
        # a trusted package is imported from the installation, never from the working
        # directory (where a sender's folder could shadow it; `python -m` puts it on the path)
        here = {"", os.getcwd()}
        shadowing = [p for p in sys.path if p in here or (p and Path(p).resolve() == Path.cwd().resolve())]
        for p in shadowing:
            sys.path.remove(p)
        try:
            print(check_export(args.export, args.trust_source or args.trust_package))
        finally:
            sys.path[:0] = shadowing


def configs_command(argv: list[str], prog: str = "maskednas configs") -> None:
    """List the shipped configs (`--config NAME`) with their first comment line."""
    argparse.ArgumentParser(prog=prog, description=configs_command.__doc__).parse_args(argv)
    for name, path in sorted(shipped_configs().items()):
        first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines()
                      if line.startswith("#")), "")
        print(f"{name:<22} {first}")


COMMANDS = {"run": run_command, "front": front_command, "latency": latency_command,
            "inspect": inspect_command, "configs": configs_command}


def main(argv: list[str] | None = None) -> None:
    """The console command: `maskednas COMMAND ARGS`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print(f"\ncommands: {', '.join(COMMANDS)}; `maskednas COMMAND --help` for each")
        return
    if argv[0] not in COMMANDS:
        sys.exit(f"error: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}")
    execute(COMMANDS[argv[0]], argv[1:], f"maskednas {argv[0]}")


def execute(command, argv: list[str], prog: str) -> None:
    """Run one command; every failure ends in one line (`--debug`: the traceback)."""
    # a user's model.source=mynet:build imports ./mynet.py, as `python -m` would; not for
    # `inspect`, whose trusted packages must not be shadowed by a folder a sender placed here
    if command in (run_command, front_command, latency_command) and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if parallel.launched():
        signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        command(argv, prog)
    except KeyboardInterrupt:
        who = rank_prefix()
        sys.exit(f"{who}interrupted; continue with --resume <run dir> (the last epoch's checkpoint "
                 f"is kept){'; if another rank failed, torchrun names it' if who else ''}")
    except Exception as e:  # noqa: BLE001: every failure ends in one line; --debug shows where
        if "--debug" in argv:
            raise
        sys.exit(error_line(e))
