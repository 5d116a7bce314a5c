"""The architecture step of the search: alpha and masks on the architecture's batches.

First order (default) differentiates the validation loss at the current weights. Second order
(DARTS, Liu et al. 2019, eq. 7-8) differentiates through one virtual SGD step of the weights,
w' = w - xi * (dL_train/dw + wd * w), and approximates the Hessian-vector product by central
differences. Both run the model with `torch.func.functional_call` on dicts of tensors, so the
model is never copied or rebuilt. Only the arch parameters receive gradients here.

The loss's and the penalty's gradients are taken apart, so that their norms per kind of
parameter (op logits, mask logits) show which of the two drives the search, and so that the
loss's share can be scaled (`loss_weight`; 0 is the "penalty only" ablation).

Under torchrun these passes do not go through DistributedDataParallel, so the gradients are
averaged over ranks here: the architecture gradients, and in second order also the virtual
step's weight gradients and the unrolled weights' gradients, as one process would compute them
on the global batch (the cost penalty is the same on every rank; its gradient passes unchanged).
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch.func import functional_call

from maskednas import parallel
from maskednas.ops import WidthRounding
from maskednas.search.penalty import CostPenalty
from maskednas.supernet.cost_model import ESTIMATORS
from maskednas.training.losses import cross_entropy, hits


class Architect:
    """Adam over alpha (weight decay `weight_decay`, DARTS' 1e-3) and mask logits (their own
    `mask_weight_decay`, 0 unless asked for: decay pulls a logit toward 0, which is gate 1/2,
    the keep/prune threshold, and would undo the masks' decisions)."""

    def __init__(self, net, penalty: CostPenalty, lr: float, weight_decay: float = 0.0,
                 order: int = 1, betas: tuple[float, float] = (0.5, 0.999),
                 estimator: str = "discrete", hessian_eps: float = 0.01,
                 rounding: WidthRounding = WidthRounding(), mask_weight_decay: float = 0.0,
                 surrogate_temperature: float | None = 1.0, loss_fn=None,
                 loss_weight: float = 1.0) -> None:
        self.net, self.penalty, self.order = net, penalty, order
        # the data loss of a batch: loss_fn(logits, x, y) (cross-entropy, or with distillation)
        self.loss_fn = loss_fn or (lambda logits, x, y: cross_entropy(logits, y))
        self.loss_weight = loss_weight
        self.hessian_eps = hessian_eps  # finite-difference step, relative to |d L_arch / d w'|
        self.point_fn = functools.partial(ESTIMATORS.get(estimator), rounding=rounding,
                                          surrogate_temperature=surrogate_temperature)
        self.params = net.arch_parameters()
        alphas = list(net.alphas.values())
        masks = [m.logits for m in net.masks.values()]
        self.kinds = {"op_logits": slice(0, len(alphas)), "mask_logits": slice(len(alphas), None)}
        self.optimizer = torch.optim.Adam(
            [{"params": alphas, "weight_decay": weight_decay},
             {"params": masks, "weight_decay": mask_weight_decay}], lr=lr, betas=betas)
        name_of = {id(p): n for n, p in net.named_parameters()}
        self.arch_names = [name_of[id(p)] for p in self.params]  # same order as self.params
        arch_ids = set(map(id, self.params))
        self.weight_names = [n for n, p in net.named_parameters() if id(p) not in arch_ids]

    def objective(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
        """The loss on the architecture's batch and the cost penalty, apart; every target's
        figure is read at one point (op weights and widths) of the estimator."""
        loss = self.loss_fn(logits, x, y)
        penalty, figures = self.penalty(*self.point_fn(self.net))
        return loss, penalty.to(loss.device), figures

    def combine(self, loss_grads: list[torch.Tensor], penalty_grads: list[torch.Tensor]):
        """loss_weight * the loss's gradient + the penalty's, and both one's norms per kind of
        architecture parameter (device tensors: read once an epoch, no sync here)."""
        def norm(grads):
            return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))

        norms = {}
        for part, grads in (("loss", loss_grads), ("penalty", penalty_grads)):
            norms[f"grad_norm/{part}"] = norm(grads)
            norms.update({f"grad_norm/{part}/{kind}": norm(grads[where])
                          for kind, where in self.kinds.items() if grads[where]})
        return [self.loss_weight * gl + gp for gl, gp in zip(loss_grads, penalty_grads)], norms

    def step(self, train_batch, arch_batch, xi: float = 0.0, w_weight_decay: float = 0.0,
             autocast=contextlib.nullcontext) -> dict[str, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        if self.order == 1:
            grads, stats = self.first_order_grads(arch_batch, autocast)
        else:
            grads, stats = self.second_order_grads(train_batch, arch_batch, xi, w_weight_decay, autocast)
        for p, g in zip(self.params, grads):
            p.grad = g
        self.optimizer.step()
        return stats

    def first_order_grads(self, arch_batch, autocast=contextlib.nullcontext):
        x, y = arch_batch
        with autocast():
            logits = self.net(x)
        loss, penalty, figures = self.objective(logits, x, y)
        loss_grads = _grads(loss, self.params)
        parallel.average_(loss_grads)  # the penalty is the same on every rank
        grads, norms = self.combine(loss_grads, _grads(penalty, self.params))
        return grads, {**_stats(logits, y, loss, penalty, figures), **norms}

    def second_order_grads(self, train_batch, arch_batch, xi: float, w_weight_decay: float = 0.0,
                           autocast=contextlib.nullcontext):
        named = dict(self.net.named_parameters())
        arch = {n: named[n] for n in self.arch_names}
        weights = {n: named[n] for n in self.weight_names}
        # the passes run at virtual weights (w', w +- eps v): BatchNorm's running statistics
        # update copies, so the network's own describe only the weights it really has
        scratch = {n: b.clone() for n, b in self.net.named_buffers()}

        def train_loss(w: dict) -> torch.Tensor:
            x, y = train_batch
            with autocast():
                logits = functional_call(self.net, {**w, **arch, **scratch}, (x,))
            return self.loss_fn(logits, x, y)

        g = _grads(train_loss(weights), list(weights.values()))
        parallel.average_(g)
        unrolled = {n: (w - xi * (gw + w_weight_decay * w)).detach().requires_grad_()
                    for (n, w), gw in zip(weights.items(), g)}
        x, y = arch_batch
        with autocast():
            logits = functional_call(self.net, {**unrolled, **arch, **scratch}, (x,))
        loss, penalty, figures = self.objective(logits, x, y)
        grads = _grads(loss, [*arch.values(), *unrolled.values()])
        parallel.average_(grads)
        d_arch, d_w = grads[:len(arch)], grads[len(arch):]

        # d^2 L_train / (d alpha d w) . d_w  ~  (g_alpha(w + eps v) - g_alpha(w - eps v)) / (2 eps)
        eps = self.hessian_eps / torch.cat([v.flatten() for v in d_w]).norm().clamp_min(1e-12)
        plus, minus = (_grads(train_loss({n: w + s * eps * v for (n, w), v in zip(weights.items(), d_w)}),
                              list(arch.values())) for s in (1.0, -1.0))
        difference = [gp - gm for gp, gm in zip(plus, minus)]
        parallel.average_(difference)
        loss_grads = [da - xi * dg / (2 * eps) for da, dg in zip(d_arch, difference)]
        grads, norms = self.combine(loss_grads, _grads(penalty, list(arch.values())))
        return grads, {**_stats(logits, y, loss, penalty, figures), **norms}


def _grads(output: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    if not output.requires_grad:  # no cost target: no penalty
        return [torch.zeros_like(i) for i in inputs]
    grads = torch.autograd.grad(output, inputs, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, grads)]


def _stats(logits, y, loss, penalty, figures) -> dict[str, torch.Tensor]:
    return {"arch_loss": loss.detach(), "arch_correct": hits(logits, y),
            "penalty": penalty.detach(),
            **{f"penalised_{name}": torch.as_tensor(v).detach() for name, v in figures.items()}}
