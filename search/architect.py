"""The architecture step of bilevel search: alpha and masks on validation batches.

First order (default) differentiates the validation loss at the current weights. Second order
(DARTS, Liu et al. 2019, eq. 7-8) differentiates through one virtual SGD step of the weights,
w' = w - xi * (dL_train/dw + wd * w), and approximates the Hessian-vector product by central
differences. Both run the model with `torch.func.functional_call` on dicts of tensors, so the
model is never copied or rebuilt. Only the arch parameters receive gradients here.

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
from maskednas.training.losses import cross_entropy


class Architect:
    """Adam over alpha (weight decay `weight_decay`, DARTS' 1e-3) and mask logits (their own
    `mask_weight_decay`, 0 unless asked for: decay pulls a logit toward 0, which is gate 1/2,
    the keep/prune threshold, and would undo the masks' decisions)."""

    def __init__(self, net, penalty: CostPenalty, lr: float, weight_decay: float = 0.0,
                 order: int = 1, betas: tuple[float, float] = (0.5, 0.999),
                 estimator: str = "discrete", hessian_eps: float = 0.01,
                 rounding: WidthRounding = WidthRounding(), mask_weight_decay: float = 0.0,
                 surrogate_temperature: float | None = 1.0) -> None:
        self.net, self.penalty, self.order = net, penalty, order
        self.hessian_eps = hessian_eps  # finite-difference step, relative to |d L_val / d w'|
        self.point_fn = functools.partial(ESTIMATORS.get(estimator), rounding=rounding,
                                          surrogate_temperature=surrogate_temperature)
        self.params = net.arch_parameters()
        alphas = list(net.alphas.values())
        masks = [m.logits for m in net.masks.values()]
        self.optimizer = torch.optim.Adam(
            [{"params": alphas, "weight_decay": weight_decay},
             {"params": masks, "weight_decay": mask_weight_decay}], lr=lr, betas=betas)
        name_of = {id(p): n for n, p in net.named_parameters()}
        self.arch_names = [name_of[id(p)] for p in self.params]  # same order as self.params
        arch_ids = set(map(id, self.params))
        self.weight_names = [n for n, p in net.named_parameters() if id(p) not in arch_ids]

    def objective(self, logits: torch.Tensor, y: torch.Tensor):
        """Validation loss + cost penalty; also returns the parts for logging. Every target's
        figure is read at one point (op weights and widths) of the estimator."""
        loss = cross_entropy(logits, y)
        penalty, figures = self.penalty(*self.point_fn(self.net))
        return loss + penalty.to(loss.device), loss, penalty, figures

    def step(self, train_batch, val_batch, xi: float = 0.0, w_weight_decay: float = 0.0,
             autocast=contextlib.nullcontext) -> dict[str, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        if self.order == 1:
            grads, stats = self.first_order_grads(val_batch, autocast)
        else:
            grads, stats = self.second_order_grads(train_batch, val_batch, xi, w_weight_decay, autocast)
        for p, g in zip(self.params, grads):
            p.grad = g
        self.optimizer.step()
        return stats

    def first_order_grads(self, val_batch, autocast=contextlib.nullcontext):
        x, y = val_batch
        with autocast():
            logits = self.net(x)
        total, loss, penalty, figures = self.objective(logits, y)
        grads = _grads(total, self.params)
        parallel.average_(grads)
        return grads, _stats(logits, y, loss, penalty, figures)

    def second_order_grads(self, train_batch, val_batch, xi: float, w_weight_decay: float = 0.0,
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
            return cross_entropy(logits, y)

        g = _grads(train_loss(weights), list(weights.values()))
        parallel.average_(g)
        unrolled = {n: (w - xi * (gw + w_weight_decay * w)).detach().requires_grad_()
                    for (n, w), gw in zip(weights.items(), g)}
        x, y = val_batch
        with autocast():
            logits = functional_call(self.net, {**unrolled, **arch, **scratch}, (x,))
        total, loss, penalty, figures = self.objective(logits, y)
        grads = _grads(total, [*arch.values(), *unrolled.values()])
        parallel.average_(grads)
        d_arch, d_w = grads[:len(arch)], grads[len(arch):]

        # d^2 L_train / (d alpha d w) . d_w  ~  (g_alpha(w + eps v) - g_alpha(w - eps v)) / (2 eps)
        eps = self.hessian_eps / torch.cat([v.flatten() for v in d_w]).norm().clamp_min(1e-12)
        plus, minus = (_grads(train_loss({n: w + s * eps * v for (n, w), v in zip(weights.items(), d_w)}),
                              list(arch.values())) for s in (1.0, -1.0))
        difference = [gp - gm for gp, gm in zip(plus, minus)]
        parallel.average_(difference)
        arch_grads = [da - xi * dg / (2 * eps) for da, dg in zip(d_arch, difference)]
        return arch_grads, _stats(logits, y, loss, penalty, figures)


def _grads(output: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(output, inputs, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, grads)]


def _stats(logits, y, loss, penalty, figures) -> dict[str, torch.Tensor]:
    return {"val_loss": loss.detach(), "val_correct": (logits.argmax(1) == y).sum(),
            "penalty": penalty.detach(),
            **{f"penalised_{name}": torch.as_tensor(v).detach() for name, v in figures.items()}}
