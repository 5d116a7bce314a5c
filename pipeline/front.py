"""The front as a product: search a trained supernet's subnets (`search.front`), write the
Pareto set (`front.name`: front.json, front.md, front.png, and TensorBoard), and export the best
subnet per budget as an ordinary export folder (`front-<objective>-<fraction>`), each
fine-tuned if asked.

    from maskednas.pipeline import load_config
    from maskednas.pipeline.front import front
    front(cfg, run_dir, data, searched)   # searched: pipeline.stages.search(...) or load_search(...)
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from maskednas.common import atomic_write
from maskednas.datasource import ImageData
from maskednas.derive import slim
from maskednas.derive.discretize import Budget, Derivation
from maskednas.ops import WidthRounding
from maskednas.pipeline.config import ConfigError, RunConfig
from maskednas.pipeline.setup import (TrainingContext, build_supernet, data_meta, latency_model,
                                      seed_everything)
from maskednas.pipeline.stages import Chosen, Report, SearchOutcome, derive_and_export
from maskednas.training.finetune import recalibrate_batchnorm
from maskednas.search.front import Candidate, FrontSearch, SubnetScorer, pareto, plot_front
from maskednas.search.penalty import bind_targets
from maskednas.supernet.subnets import Subnet, SubnetSpace
from maskednas.supernet.targets import COST_TARGETS, resolve_targets


def front(cfg: RunConfig, run_dir: Path, data: ImageData, searched: SearchOutcome,
          logger=None, report: Report = print, export: bool = True) -> dict:
    """Search the front of `searched.net`, write it, export a subnet per budget (unless not
    `export`: the front's files alone); returns what front.json holds."""
    run_dir, fr = Path(run_dir), cfg.front
    run_dir.mkdir(parents=True, exist_ok=True)
    net = searched.net
    ctx = TrainingContext(cfg, data, next(net.parameters()).device)
    check_validation_split(cfg)
    seed_everything(cfg.seed)
    rounding = WidthRounding(cfg.derive.round_to, cfg.derive.min_channels)
    space = SubnetSpace(net, cfg.search.sandwich.width_fractions, rounding)
    latency = searched.latency or latency_model(cfg, net, run_dir, report)
    objectives = bind_targets(fr.objectives, net, latency, cfg.latency.batch)
    limits = resolve_targets(fr.constraints, net, cfg.derive.min_channels, latency, cfg.latency.batch)
    constraints = {n: (t, limits[n]) for n, t in bind_targets(limits, net, latency, cfg.latency.batch).items()}
    calibration = list(itertools.islice(ctx.train_loader(), fr.bn_batches))
    net.eval()
    search = FrontSearch(space, SubnetScorer(space, calibration, ctx.val_loader, ctx.autocast),
                         objectives, constraints, fr, cfg.seed)
    start = time.perf_counter()
    search.run()
    first, target = fr.objectives[0], objectives[fr.objectives[0]]
    dense = target.dense()
    budgets = {f"{fr.name}-{first}-{fraction:g}": Budget(target, fraction * dense) for fraction in fr.budgets}
    picks: dict[str, Candidate] = {}
    for name, budget in budgets.items():
        pick = search.pick(budget.target, cfg.derive.tolerance, fr.refine)
        if pick is None:
            report(f"note: no subnet scored is under {target.show(budget.target)} "
                   f"({budget.target / dense:g} of the dense network): {name} is not exported")
            continue
        if not pick.extra["in_band"]:
            report(f"note: {name} has {target.show(pick.costs[first])}, more than "
                   f"{cfg.derive.tolerance:.0%} below its budget {target.show(budget.target)}: no "
                   f"subnet scored grows into that band (its ops' next step jumps past the budget)")
        picks[name] = pick
    seconds = time.perf_counter() - start
    optimal = pareto(search.candidates, fr.objectives)
    result = summarize(search.candidates, optimal, picks, fr.objectives,
                       {n: t.dense() for n, t in objectives.items()}, seconds, fr.strategy)
    write_front(run_dir, fr.name, result, plot_front(search.candidates, optimal, picks, first, target.label),
                logger)
    report(result["table"])
    if not export:
        return result
    teacher = None  # the space's (a user's network as it was before pruning)
    if fr.finetune and cfg.finetune.kd_weight and net.distillation_teacher() is net:
        # not the soft supernet: its largest subnet, with statistics of its own
        teacher = slim(net, derivation_of(space, space.largest(), ctx))
        recalibrate_batchnorm(teacher, calibration, len(calibration))
        teacher.eval()
    stages = ["derive", *(["finetune"] if fr.finetune else []), "export"]
    for name, pick in picks.items():
        derivation, budget = derivation_of(space, pick.subnet, ctx), budgets[name]
        metrics = derive_and_export(cfg, run_dir, data, replace(searched, targets={}), stages, name,
                                    report=report, chosen=Chosen(derivation, budget, teacher))
        result["exports"][name] = {"budget": budget.target, first: budget.of(derivation.arch),
                                   **{k: metrics[k] for k in ("val_acc", "test_acc", "macs", "params")}}
    write_front(run_dir, fr.name, result)
    return result


def check_validation_split(cfg: RunConfig) -> None:
    if not cfg.data.validation_fraction:
        raise ConfigError("the front scores subnets on the validation split, and "
                          "data.validation_fraction=0 holds none out: set it above 0 (e.g. 0.1)")


def check_front(cfg: RunConfig, data: ImageData) -> None:
    """What the front needs, checked before anything is written: a supernet trained by the
    sandwich rule, a validation split, and budgets no lower than its smallest subnet's figure."""
    if cfg.search.strategy != "sandwich":
        raise ConfigError(f"the front reads subnets off a supernet trained for all of them "
                          f"(search.strategy=sandwich); this run's search is "
                          f"search.strategy={cfg.search.strategy}, whose subnets were never trained "
                          f"on their own")
    check_validation_split(cfg)
    net = build_supernet(cfg, data_meta(data), torch.device("cpu"))
    space = SubnetSpace(net, cfg.search.sandwich.width_fractions,
                        WidthRounding(cfg.derive.round_to, cfg.derive.min_channels))
    name = cfg.front.objectives[0]
    target = bind_targets([name], net, latency_model(cfg, net, write_cache=False), cfg.latency.batch)[name]
    dense, smallest = target.dense(), target.of(space.architecture(space.smallest()))
    low = [b for b in cfg.front.budgets if b * dense < smallest]
    if low:
        raise ConfigError(f"front.budgets {low} of the dense network's {target.show(dense)} lie below "
                          f"the smallest subnet ({target.show(smallest)}, {smallest / dense:.1%}: every "
                          f"group at its narrowest of search.sandwich.width_fractions, every choice its "
                          f"cheapest op); use budgets of at least {smallest / dense:.3f}")


def derivation_of(space: SubnetSpace, subnet: Subnet, ctx: TrainingContext) -> Derivation:
    used = space.net.used_groups(subnet.ops)
    return Derivation(space.architecture(subnet, ctx.meta.mean, ctx.meta.std), subnet.ops,
                      space.keep(subnet, used))


def summarize(candidates: list[Candidate], front: list[Candidate], picks: dict[str, Candidate],
              objectives: list[str], dense: dict[str, float], seconds: float, strategy: str) -> dict:
    """front.json's content: every candidate, the Pareto set, the picks and a markdown table."""
    show = {n: COST_TARGETS.get(n).show for n in objectives}
    head = ["val acc (%)", *(f"{COST_TARGETS.get(n).label} (of dense)" for n in objectives)]
    line = lambda c: [f"{100 * c.val_acc:.2f}", *(f"{show[n](c.costs[n])} ({c.costs[n] / dense[n]:.1%})"
                                                  for n in objectives)]
    table = [f"Pareto front ({strategy}, {len(candidates)} subnets scored on the validation split in "
             f"{seconds:.0f}s): {len(front)} points", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    table += ["| " + " | ".join(line(c)) + " |" for c in front]
    table += ["", "Exported per budget", "", "| export | " + " | ".join(head) + " | origin |",
              "|" + "---|" * (len(head) + 2)]
    table += [f"| {name} | " + " | ".join(line(c)) + f" | {c.origin}"
              f"{'' if c.extra.get('in_band', True) else ', below the tolerance'} |" for name, c in picks.items()]
    return {"strategy": strategy, "objectives": objectives, "dense": dense, "seconds": seconds,
            "candidates": [c.row() for c in candidates], "pareto": [c.row() for c in front],
            "picks": {name: c.row() for name, c in picks.items()}, "exports": {},
            "table": "\n".join(table)}


def write_front(run_dir: Path, name: str, result: dict, figure=None, logger=None) -> None:
    """<name>.json and <name>.md (atomically), <name>.png, and TensorBoard's `front/` tags."""
    text = json.dumps(result, indent=2)
    atomic_write(run_dir / f"{name}.json", lambda tmp: Path(tmp).write_text(text))
    atomic_write(run_dir / f"{name}.md", lambda tmp: Path(tmp).write_text(result["table"] + "\n"))
    if figure is not None:
        atomic_write(run_dir / f"{name}.png", lambda tmp: figure.savefig(tmp, format="png", dpi=120))
        if logger is not None:
            logger.front(result, figure)
        import matplotlib.pyplot as plt
        plt.close(figure)
