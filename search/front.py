"""The Pareto front of a trained supernet: subnets read off without retraining, scored on the
validation split, searched by Optuna's samplers (NSGA-II for `evolution`, TPE for `bayesian`,
uniform for `random`) for validation accuracy against every cost in `front.objectives`.

A subnet's score is its validation accuracy with BatchNorm statistics re-estimated for it on a
fixed set of training batches (the statistics the supernet gathered describe a mix of widths),
the supernet's own statistics restored afterwards. Per budget, the best subnets under it are
grown toward it (every group the same share of the way to its full width, bisected, then one
width step at a time) and scored again; the most accurate one within `derive.tolerance` below
the budget is its pick (`in_band`), or the most accurate of all where none reaches the band.

Optuna has no reinforcement-learning sampler; a REINFORCE controller (Zoph and Le) needs
thousands of evaluations to beat these at the few hundred a front affords here, so none is
offered.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from maskednas.supernet.subnets import Subnet, SubnetSpace
from maskednas.training.finetune import evaluate, recalibrate_batchnorm


@dataclass
class Candidate:
    """One scored subnet: its validation accuracy, each cost, and whether it meets every
    constraint; `origin` is "sampled" (a trial of the study) or "grown" (toward a budget)."""
    subnet: Subnet
    val_acc: float
    costs: dict[str, float]
    feasible: bool = True
    origin: str = "sampled"
    seconds: float = 0.0  # since the front search started
    slack: list[float] = field(default_factory=list)  # per constraint: figure / limit - 1
    extra: dict = field(default_factory=dict)

    def row(self) -> dict:
        return {"val_acc": self.val_acc, **self.costs, "feasible": self.feasible,
                "origin": self.origin, "seconds": self.seconds, **self.extra,
                "ops": self.subnet.ops, "widths": self.subnet.widths}


class SubnetScorer:
    """Validation accuracy of a subnet of the supernet, hard-masked to it."""

    def __init__(self, space: SubnetSpace, calibration: list, val_loader, autocast) -> None:
        self.space, self.net = space, space.net
        self.calibration, self.val_loader, self.autocast = calibration, val_loader, autocast
        self.norms = [m for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    @torch.no_grad()
    def __call__(self, subnet: Subnet) -> float:
        saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
                 for m in self.norms if m.track_running_stats]
        self.space.activate(subnet)
        try:
            recalibrate_batchnorm(self.net, self.calibration, len(self.calibration))
            return evaluate(self.net, self.val_loader, self.autocast)["acc"]
        finally:
            self.net.soft_mask()
            for m, (mean, var, count) in zip([m for m in self.norms if m.track_running_stats], saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


def sampler(strategy: str, seed: int, population: int):
    """Optuna's sampler for a front strategy (NSGA-II and TPE steer by the constraints each
    trial records with `Trial.set_constraint`)."""
    import optuna
    samplers = {
        "evolution": lambda: optuna.samplers.NSGAIISampler(population_size=population, seed=seed),
        "bayesian": lambda: optuna.samplers.TPESampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
    }
    if strategy not in samplers:
        raise ValueError(f"front strategy must be one of {', '.join(samplers)}, got {strategy!r}")
    return samplers[strategy]()


def pareto(candidates: list[Candidate], objectives: list[str]) -> list[Candidate]:
    """The feasible candidates no other feasible one dominates (accuracy at least as high and
    every objective at most as high, one of them strictly), by the first objective."""
    feasible = [c for c in candidates if c.feasible]
    key = lambda c: (c.val_acc, *(-c.costs[o] for o in objectives))
    dominated = lambda c, d: all(a >= b for a, b in zip(key(d), key(c))) and key(d) != key(c)
    front = [c for c in feasible if not any(dominated(c, d) for d in feasible)]
    return sorted(front, key=lambda c: c.costs[objectives[0]])


class FrontSearch:
    """An Optuna study over `space`: maximise the scorer's accuracy, minimise every cost of
    `objectives` (name -> bound cost target); `constraints` (name -> (bound target, limit))
    make a subnet infeasible when exceeded."""

    def __init__(self, space: SubnetSpace, scorer: Callable[[Subnet], float],
                 objectives: Mapping, constraints: Mapping, cfg, seed: int) -> None:
        self.space, self.scorer, self.cfg, self.seed = space, scorer, cfg, seed
        self.objectives, self.constraints = dict(objectives), dict(constraints)
        self.candidates: list[Candidate] = []
        self._scored: dict[tuple, Candidate] = {}  # a subnet a sampler proposes again is not rescored
        self.start = time.perf_counter()

    def costs(self, subnet: Subnet) -> tuple[dict[str, float], list[float]]:
        """Each objective's figure, and each constraint's (figure / limit - 1: <= 0 is met)."""
        arch = self.space.architecture(subnet)
        costs = {n: float(t.of(arch)) for n, t in self.objectives.items()}
        slack = [float(t.of(arch)) / limit - 1 for t, limit in self.constraints.values()]
        return costs, slack

    def score(self, subnet: Subnet, origin: str = "sampled") -> Candidate:
        key = tuple(sorted(subnet.params().items()))
        if key in self._scored:
            return self._scored[key]
        costs, slack = self.costs(subnet)
        candidate = Candidate(subnet, self.scorer(subnet), costs, all(s <= 0 for s in slack), origin,
                              time.perf_counter() - self.start, slack)
        self.candidates.append(candidate)
        self._scored[key] = candidate
        return candidate

    def run(self, progress: bool = True) -> list[Candidate]:
        """Score the largest and the smallest subnet, then `trials` in all (or until the
        timeout); returns every distinct candidate scored."""
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = study = optuna.create_study(
            directions=["maximize", *["minimize"] * len(self.objectives)],
            sampler=sampler(self.cfg.strategy, self.seed, self.cfg.population))
        for subnet in (self.space.largest(), self.space.smallest())[:self.cfg.trials]:
            study.enqueue_trial(subnet.params())

        def objective(trial):
            subnet = Subnet.from_params(
                {**{f"op:{k}": trial.suggest_categorical(f"op:{k}", v) for k, v in self.space.choices.items()},
                 **{f"width:{g}": trial.suggest_categorical(f"width:{g}", c)
                    for g, c in self.space.width_choices.items()}})
            candidate = self.score(subnet)
            for name, slack in zip(self.constraints, candidate.slack):
                trial.set_constraint(name, slack)
            return (candidate.val_acc, *candidate.costs.values())

        with tqdm(total=self.cfg.trials, desc=f"front ({self.cfg.strategy})", dynamic_ncols=True,
                  mininterval=1.0, disable=not progress) as bar:
            study.optimize(objective, n_trials=self.cfg.trials, timeout=self.cfg.timeout_s,
                           callbacks=[lambda study, trial: bar.update(1)])
        return self.candidates

    def pick(self, budget: float, tolerance: float, refine: int = 3) -> Candidate | None:
        """The best subnet for `budget` (of the first objective): the `refine` most accurate
        feasible subnets under it, each grown toward it (`grow`) and scored again; the most
        accurate of those within `tolerance` below the budget (of all, if none is). None when
        no subnet scored is under the budget."""
        first = next(iter(self.objectives))
        under = sorted((c for c in self.candidates if c.feasible and c.costs[first] <= budget),
                       key=lambda c: (-c.val_acc, c.costs[first]))
        if not under:
            return None
        grown = []
        for c in under[:refine]:
            subnet = self.grow(c.subnet, budget, tolerance)
            if subnet == c.subnet:
                grown.append(c)
                continue
            g = self.score(subnet, "grown")
            if g.origin == "grown":
                g.extra.update({"grown_from_val_acc": c.val_acc, f"grown_from_{first}": c.costs[first]})
            grown.append(g)
        # those that reached the budget's band first (a cheap op may sit below it at full width,
        # with its every promotion above the budget)
        in_band = lambda c: c.costs[first] >= (1 - tolerance) * budget
        best = max(grown, key=lambda c: (in_band(c), c.val_acc, c.costs[first]))
        best.extra["in_band"] = in_band(best)
        return best

    def grow(self, subnet: Subnet, budget: float, tolerance: float, iterations: int = 30) -> Subnet:
        """`subnet` grown as close to `budget` as it stays under it and meets the constraints:
        every group the same share of the way to its full width (the largest share, bisected),
        and where full widths stay short of the budget, its ops promoted toward the largest
        subnet's as well (`SubnetSpace.grown`). Unchanged when within `tolerance` below it."""
        first = next(iter(self.objectives))

        def fits(share: float, ops_too: bool) -> tuple[bool, Subnet]:
            grown = self.space.grown(subnet, share, ops_too)
            costs, slack = self.costs(grown)
            return costs[first] <= budget and all(s <= 0 for s in slack), grown

        if self.costs(subnet)[0][first] >= (1 - tolerance) * budget:
            return subnet
        ok, widest = fits(1.0, False)
        ops_too = ok and self.costs(widest)[0][first] < (1 - tolerance) * budget
        if ok and not ops_too:
            return widest
        lo, hi, best = 0.0, 1.0, subnet
        for _ in range(iterations):
            mid = (lo + hi) / 2
            ok, grown = fits(mid, ops_too)
            lo, hi, best = (mid, hi, grown) if ok else (lo, mid, best)
        return self.top_up(best, budget, tolerance)

    def top_up(self, subnet: Subnet, budget: float, tolerance: float) -> Subnet:
        """Widen one group at a time by one step (the costliest step that stays under the budget
        and meets the constraints) until within `tolerance` below the budget: many groups of one
        size cross a rounding step at the same share, so the shared growth alone jumps past it."""
        first = next(iter(self.objectives))
        cost = self.costs(subnet)[0][first]
        while cost < (1 - tolerance) * budget:
            steps = []
            for group in self.space.net.used_groups(subnet.ops):
                wider = self.space.wider(subnet, group)
                if wider is not None:
                    costs, slack = self.costs(wider)
                    if costs[first] <= budget and all(s <= 0 for s in slack):
                        steps.append((costs[first], group, wider))
            if not steps:
                break
            cost, _, subnet = max(steps, key=lambda s: s[0])
        return subnet


def plot_front(candidates: list[Candidate], front: list[Candidate], picks: Mapping[str, Candidate],
               objective: str, label: str):
    """Validation accuracy against the first objective: every subnet scored, the Pareto front
    as a line, each budget's export as a star."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([c.costs[objective] for c in candidates], [100 * c.val_acc for c in candidates],
               s=10, c="0.7", label="subnets scored")
    ax.plot([c.costs[objective] for c in front], [100 * c.val_acc for c in front], "-o", ms=4,
            label="Pareto front")
    for name, c in picks.items():
        ax.scatter([c.costs[objective]], [100 * c.val_acc], marker="*", s=120, c="tab:red", zorder=3)
        ax.annotate(name, (c.costs[objective], 100 * c.val_acc), textcoords="offset points",
                    xytext=(4, -10), fontsize=7)
    ax.set_xlabel(label)
    ax.set_ylabel("validation accuracy (%)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig
