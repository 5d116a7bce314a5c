"""The search loop (DARTS order: architecture step on an architecture batch, then a
weight step on a training batch), with warm-up, temperature annealing, logging and resume.

Under torchrun every rank runs this loop on its shard of each batch: the weight step goes
through DistributedDataParallel, the architecture step averages its own gradients
(`search.architect`), so every rank holds the same weights, alpha and masks after each step;
BN running statistics are made equal at the end of each epoch. Rank 0 writes the checkpoint.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
from timm.scheduler import CosineLRScheduler
from tqdm import tqdm

from maskednas import parallel
from maskednas.derive.discretize import hold_target, search_budget
from maskednas.ops import WidthRounding
from maskednas.search.architect import Architect
from maskednas.search.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from maskednas.search.penalty import CostPenalty, bind_targets
from maskednas.supernet.cost_model import discrete_point, expected_point
from maskednas.training.autocast import autocast_factory
from maskednas.training.losses import NonFiniteLossError, cross_entropy, distillation_loss, hits
from maskednas.training.optimizers import weight_optimizer


def progress_at(epoch: int, search_cfg) -> float:
    """Fraction of the architecture search done at the start of `epoch`: 0 through warm-up,
    1 in the last epoch."""
    s = search_cfg
    span = max(s.epochs - s.warmup_epochs - 1, 1)
    return min(max(epoch - s.warmup_epochs, 0) / span, 1.0)


def temperature_at(epoch: int, search_cfg) -> float:
    """Held at the start value during warm-up, then annealed geometrically to the end value."""
    s = search_cfg
    return s.temperature_start * (s.temperature_end / s.temperature_start) ** progress_at(epoch, s)


def search_loss(teacher, kd_weight: float, temperature: float):
    """The data loss of both search steps, loss(logits, x, y): cross-entropy, or with
    `kd_weight` of it distilled from `teacher` (the network before pruning)."""
    if teacher is None or not kd_weight:
        return lambda logits, x, y: cross_entropy(logits, y)

    def loss(logits, x, y):
        with torch.no_grad():
            target = teacher(x)
        return ((1 - kd_weight) * cross_entropy(logits, y)
                + kd_weight * distillation_loss(logits, target, temperature))
    return loss


def decisions(net) -> tuple[torch.Tensor, torch.Tensor]:
    """Each choice's op (argmax of its logits) and every channel's keep bit, as two device
    tensors (compared across an epoch: how many decisions it changed)."""
    device = net.temperature.device
    ops = torch.stack([a.detach().argmax() for a in net.alphas.values()]) if net.alphas else \
        torch.zeros(0, dtype=torch.long, device=device)
    kept = torch.cat([m.kept() for m in net.masks.values()]) if net.masks else \
        torch.zeros(0, dtype=torch.bool, device=device)
    return ops, kept


def decision_margin_spread(net) -> float:
    """Std over choices of (best minus second-best op logit): near 0 when every choice sits at
    the same margin, i.e. the decisions move in lockstep."""
    margins = [a.detach().topk(2).values for a in net.alphas.values() if a.numel() > 1]
    if len(margins) < 2:
        return 0.0
    return float(torch.stack([m[0] - m[1] for m in margins]).std())


def _cycle(loader):
    """The loader's batches, again and again (each pass reshuffled by its generator): the
    architecture's batches (bilevel: a part of the training split) can be fewer than the weights'."""
    while True:
        yield from loader


class Searcher:
    CHECKPOINT = "search.pt"

    def __init__(self, cfg, net, train_loader, arch_loader, targets: dict[str, float], run_dir: Path,
                 logger=None, extra_state: dict | None = None, latency=None) -> None:
        self.cfg, self.net, self.logger, self.latency = cfg, net, logger, latency
        self.train_loader, self.arch_loader = train_loader, arch_loader
        self.targets, self.run_dir = dict(targets), Path(run_dir)  # cost target -> value
        self.extra_state = extra_state or {}
        self.device = next(net.parameters()).device
        # the weight step's view of the supernet: DDP averages the weights' gradients over ranks
        self.weight_net = parallel.data_parallel(net, ignore=net.arch_parameters())
        self.autocast = autocast_factory(self.device, cfg.amp)
        s = cfg.search
        teacher = net.distillation_teacher() if s.kd_weight else None
        self.loss_fn = search_loss(teacher, s.kd_weight, cfg.finetune.kd_temperature)
        self.grad_norms: list[dict[str, torch.Tensor]] = []  # this epoch's, per architecture step
        self.w_opt = weight_optimizer(s.w_optimizer, net.weight_parameters(), s.w_lr, s.w_momentum,
                                      s.w_weight_decay)
        self.w_sched = CosineLRScheduler(self.w_opt, t_initial=s.epochs, lr_min=s.w_lr_min)
        self.rounding = rounding = WidthRounding(cfg.derive.round_to, cfg.derive.min_channels)
        self.discrete_point = functools.partial(discrete_point, rounding=rounding)
        batch = cfg.latency.batch  # the deployment batch (peak memory is counted at it)
        self.budget = search_budget(net, targets, latency, batch)  # what hold_target holds
        # the figures every epoch reports: MACs and params always, and the run's targets
        self.penalty = CostPenalty(net, targets, s.target.weight, latency, batch)
        self.reported = bind_targets(dict.fromkeys(["macs", "params", *targets]), net, latency, batch)
        self.architect = Architect(net, self.penalty, s.arch_lr,
                                   s.arch_weight_decay, s.order, estimator=s.target.estimator,
                                   hessian_eps=s.hessian_eps, rounding=rounding,
                                   mask_weight_decay=s.mask_weight_decay,
                                   surrogate_temperature=s.target.surrogate_temperature,
                                   loss_fn=self.loss_fn, loss_weight=s.arch_loss_weight)
        self.epoch, self.step, self.history = 0, 0, []
        parallel.fork_rng()  # the initial weights and alpha are drawn: now a stream per rank

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / self.CHECKPOINT

    # -- steps ----------------------------------------------------------------------------------
    def weight_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.w_opt.param_groups[0]["params"]
        self.w_opt.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.weight_net(x)
        loss = self.loss_fn(logits, x, y)
        loss.backward(inputs=weights)  # arch parameters get no gradient from this step
        torch.nn.utils.clip_grad_norm_(weights, self.cfg.search.grad_clip)
        self.w_opt.step()
        return loss.detach(), hits(logits, y)

    def arch_step(self, train_batch, arch_batch) -> dict[str, torch.Tensor]:
        return self.architect.step(train_batch, arch_batch, xi=self.w_opt.param_groups[0]["lr"],
                                   w_weight_decay=self.cfg.search.w_weight_decay,
                                   autocast=self.autocast)

    @torch.no_grad()
    def _arch_stats(self, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return self.loss_fn(logits, x, y), hits(logits, y)

    # -- epochs ---------------------------------------------------------------------------------
    def run_epoch(self, bar: tqdm) -> dict[str, float]:
        s, net = self.cfg.search, self.net
        net.train()
        net.set_temperature(temperature_at(self.epoch, s))
        net.set_progress(progress_at(self.epoch, s))
        self.w_sched.step(self.epoch)
        search_arch = self.epoch >= s.warmup_epochs
        # summed train loss, train correct, val loss, val correct stay on the device; counts on host
        sums, counts = torch.zeros(4, device=self.device), [0, 0]
        self.grad_norms, before = [], decisions(net)
        for train_batch, arch_batch in zip(self.train_loader, _cycle(self.arch_loader)):
            if search_arch:
                stats = self.arch_step(train_batch, arch_batch)
                arch_loss, arch_correct = stats["arch_loss"], stats["arch_correct"]
                self.grad_norms.append({k: v for k, v in stats.items() if k.startswith("grad_norm/")})
            else:
                arch_loss, arch_correct = self._arch_stats(*arch_batch)
            loss, correct = self.weight_step(*train_batch)
            n, nv = train_batch[1].numel(), arch_batch[1].numel()
            sums += torch.stack([loss * n, correct.float(), arch_loss.float() * nv,
                                 arch_correct.float()])
            counts[0] += n
            counts[1] += nv
            self.step += 1
            bar.update(1)
            if self.step % self.cfg.log_every == 0:
                self._progress(bar, sums, counts)
        after = decisions(net)
        metrics = self._epoch_metrics(sums, counts)
        metrics["decisions_flipped"] = int((before[0] != after[0]).sum())
        metrics["channels_flipped"] = int((before[1] != after[1]).sum())
        metrics["decision_margin_std"] = decision_margin_spread(net)
        for key in self.grad_norms[0] if self.grad_norms else ():
            metrics[key] = float(torch.stack([n[key] for n in self.grad_norms]).mean())
        return metrics

    def _means(self, sums: torch.Tensor, counts: list[int]) -> tuple[float, float, float, float]:
        """Train loss, train acc, val loss, val acc so far, over all ranks: one host sync, and
        the place where a non-finite loss stops the search (on every rank alike)."""
        (tl, tc, vl, vc), (tn, vn) = parallel.host_totals(sums, counts)
        if not (math.isfinite(tl) and math.isfinite(vl)):
            self._stop_nonfinite()
        return tl / tn, tc / tn, vl / vn, vc / vn

    def _progress(self, bar: tqdm, sums: torch.Tensor, counts: list[int]) -> None:
        loss, acc, _, arch_acc = self._means(sums, counts)
        with torch.no_grad():
            point = self.discrete_point(self.net)
            shown = {name: t.show(float(t.value(*point))).split()[0]
                     for name, t in self.reported.items() if name == "macs" or name in self.targets}
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", arch_acc=f"{arch_acc:.3f}", **shown)

    def _epoch_metrics(self, sums: torch.Tensor, counts: list[int]) -> dict[str, float]:
        train_loss, train_acc, arch_loss, arch_acc = self._means(sums, counts)
        with torch.no_grad():
            figures = {f"{point}_{name}": float(value)
                       for point, at in (("expected", expected_point(self.net)),
                                         ("discrete", self.discrete_point(self.net)))
                       for name, target in self.reported.items() for value in [target.value(*at)]}
        return {"epoch": self.epoch, "train_loss": train_loss, "train_acc": train_acc,
                "arch_loss": arch_loss, "arch_acc": arch_acc, **figures,
                "temperature": float(self.net.temperature),
                "w_lr": self.w_opt.param_groups[0]["lr"], **self.net.arch_stats()}

    def _hold_target(self, metrics: dict[str, float]) -> None:
        """Once the derived network has reached the target (come within the derivation's
        tolerance, or crossed it), every later epoch ends on it: a network that drifted further
        off is moved back by shifting all mask logits by one offset (`derive.hold_target`), so
        that the search ends at its target and derivation changes nothing. Annealed gates make
        the penalty's discrete cost jump a few percent around the target from step to step.
        The target held is the one derivation meets (`derive.discretize.search_budget`)."""
        budget, tol, s = self.budget, self.cfg.derive.tolerance, self.cfg.search
        if budget is None or not s.hold_target or self.epoch < s.warmup_epochs:
            return
        ratios = [m[budget.metric] / budget.target for m in [*self.history, metrics]
                  if m["epoch"] >= s.warmup_epochs]
        if not (any(abs(r - 1) <= tol for r in ratios) or min(ratios) < 1 < max(ratios)):
            return
        metrics["mask_shift"], reached = hold_target(self.net, budget, tol, self.rounding)
        metrics[budget.metric] = float(reached)  # the held network's (unchanged when not moved)

    def _check_finite_state(self) -> None:
        """Weights, alpha, masks, buffers and both optimisers' state must be finite: the last
        update of an epoch can break them while every loss of the epoch was finite. One sync."""
        tensors = [*self.net.parameters(), *self.net.buffers()]
        for opt in (self.w_opt, self.architect.optimizer):
            tensors += [v for state in opt.state.values() for v in state.values()
                        if torch.is_tensor(v) and v.is_floating_point()]
        finite = torch.stack([torch.isfinite(t).all() for t in tensors if t.is_floating_point()])
        if not bool(finite.all()):
            self._stop_nonfinite("parameters or optimiser state")

    def _stop_nonfinite(self, what: str = "loss") -> None:
        kept = (f"the last good state (epoch {self.epoch}) is kept in {self.checkpoint_path}"
                if self.checkpoint_path.is_file() else "no checkpoint had been written yet")
        s = self.cfg.search
        raise NonFiniteLossError(
            f"non-finite {what} in search epoch {self.epoch + 1}; {kept}. Lower the learning "
            f"rates and resume, e.g. --resume {self.run_dir} search.w_lr={s.w_lr / 10:g} "
            f"search.arch_lr={s.arch_lr / 10:g}")

    def run(self) -> dict[str, float]:
        s = self.cfg.search
        steps = len(self.train_loader)  # an epoch is one pass of the weights; val batches cycle
        bar = tqdm(total=s.epochs * steps, initial=self.epoch * steps, desc="search",
                   dynamic_ncols=True, mininterval=1.0, disable=not parallel.is_main())
        try:
            while self.epoch < s.epochs:
                bar.set_description(f"search {self.epoch + 1}/{s.epochs}")
                metrics = self.run_epoch(bar)
                parallel.broadcast_buffers(self.net)  # BN statistics of rank 0's batches
                self._hold_target(metrics)
                self._check_finite_state()  # before the save: never overwrite a good checkpoint
                self.history.append(metrics)
                self.epoch += 1
                state = self.state_dict()  # on every rank: it gathers their random streams
                if parallel.is_main():
                    save_checkpoint(state, self.checkpoint_path)
                self._log(metrics)  # after the save: a failed event write loses no epoch
        finally:
            bar.close()
        return self.history[-1] if self.history else {}

    def _log(self, m: dict[str, float]) -> None:
        if self.logger is None:
            return
        e = self.epoch
        self.logger.scalars({"loss/train": m["train_loss"], "loss/arch": m["arch_loss"],
                             "acc/train": m["train_acc"], "acc/arch": m["arch_acc"],
                             "lr/weights": m["w_lr"], "temperature": m["temperature"],
                             "cost/mask_shift": m.get("mask_shift", 0.0),
                             **{f"arch/{k}": m[k] for k in ("decisions_flipped", "channels_flipped",
                                                           "decision_margin_std")}}, e)
        # the loss's and the penalty's gradient norms at every architecture step of the epoch
        first = self.step - len(self.train_loader)
        if self.grad_norms:
            keys = list(self.grad_norms[0])
            table = torch.stack([torch.stack([n[k] for k in keys]) for n in self.grad_norms]).tolist()
            for i, row in enumerate(table):
                self.logger.scalars({f"arch/{k}": v for k, v in zip(keys, row)}, first + i)
        self.logger.architecture(self.net, e, {k: v for k, v in m.items()
                                               if k.startswith(("expected_", "discrete_"))})

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"kind": "search", "version": 1, "epoch": self.epoch, "step": self.step,
                "model": self.net.state_dict(), "w_opt": self.w_opt.state_dict(),
                "a_opt": self.architect.optimizer.state_dict(),
                "loaders": {"train": self.train_loader.state_dict(),
                            "arch": self.arch_loader.state_dict()},
                "rng": parallel.gather(rng_state()), "history": self.history,
                "targets": self.targets,
                **self.extra_state}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.architect.optimizer.load_state_dict(state["a_opt"])
        # Learning rates come from this config, not the checkpoint, so a resume may lower them
        # (after a non-finite loss) or lengthen the search: the weight schedule is a function of
        # the epoch and the config, rebuilt rather than restored; alpha's rate is set again.
        for group in self.architect.optimizer.param_groups:
            group["lr"] = self.cfg.search.arch_lr
        self.train_loader.load_state_dict(state["loaders"]["train"])
        loaders = state["loaders"]
        self.arch_loader.load_state_dict(loaders["arch"] if "arch" in loaders else loaders["val"])
        self._restore_rng(state["rng"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], list(state["history"])

    @staticmethod
    def _restore_rng(states: list[dict] | dict) -> None:
        """Each rank's own stream when the checkpoint was written by as many ranks (a resume
        then draws what the uninterrupted run would have); otherwise rank 0's, forked again."""
        states = states if isinstance(states, list) else [states]  # written by one process
        if len(states) == parallel.size():
            set_rng_state(states[parallel.rank()])
        else:
            set_rng_state(states[0])
            parallel.fork_rng()

    def resume(self) -> None:
        self.load_state_dict(load_checkpoint(self.checkpoint_path, "search", self.device))
