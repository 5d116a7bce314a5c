"""Fine-tuning of the compact model: SGD or AdamW + cosine schedule (timm), optional knowledge
distillation from the supernet, an optional EMA copy (timm's ModelEmaV3), and DARTS' evaluation
regularisers for cell networks (drop-path rising linearly over the epochs, auxiliary head).

Under torchrun each rank trains on its shard of every batch through DistributedDataParallel and
evaluates its shard of the test set; losses and correct answers are summed over ranks.
"""
from __future__ import annotations

import contextlib
import itertools
import math

import torch
from timm.scheduler import CosineLRScheduler
from torch.optim.swa_utils import update_bn
from timm.utils import ModelEmaV3
from tqdm import tqdm

from maskednas import parallel
from maskednas.export.compact import set_drop_path
from maskednas.training.auxiliary import AuxiliaryTap
from maskednas.training.losses import NonFiniteLossError, cross_entropy, distillation_loss, hits
from maskednas.training.optimizers import weight_optimizer


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, autocast=contextlib.nullcontext) -> dict[str, float]:
    """Loss and accuracy over a whole loader, all ranks' shards of it (one host sync at the
    end)."""
    was_training = model.training
    model.eval()
    sums, n = torch.zeros(2, device=next(model.parameters()).device), 0
    for x, y in loader:
        with autocast():
            logits = model(x)
        sums = sums + torch.stack([cross_entropy(logits, y, reduction="sum"),
                                   hits(logits, y).float()])
        n += y.numel()
    model.train(was_training)
    (loss, correct), (n,) = parallel.host_totals(sums, [n])
    return {"loss": loss / n, "acc": correct / n}


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, loader, batches: int = 20) -> None:
    """Re-estimate BN running statistics of a slimmed model on `batches` training batches
    (torch's `update_bn`: a cumulative average, in training mode, then the mode restored).

    Statistics gathered in the supernet describe the soft mixture of ops; the derived network's
    activations differ, and stale statistics alone can cost most of its accuracy before
    fine-tuning (as slimmable networks and OFA observed). Under torchrun each rank estimates
    them on its shards, and the estimates are averaged."""
    update_bn(itertools.islice(loader, batches), model)
    parallel.average_batchnorm_statistics(model)


def reinitialize(model: torch.nn.Module) -> None:
    """Fresh weights for the same architecture: the 'train from scratch' baseline."""
    for m in model.modules():
        if m is not model and hasattr(m, "reset_parameters"):
            m.reset_parameters()


def finetune(model: torch.nn.Module, cfg, train_loader, teacher: torch.nn.Module | None = None,
             autocast=contextlib.nullcontext, logger=None) -> torch.nn.Module:
    """Train `model` in place for `cfg.epochs`; returns the model to export (the EMA copy when
    EMA is on)."""
    if cfg.from_scratch:
        reinitialize(model)
    if cfg.epochs == 0:
        return model
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay else None  # before the aux hook
    aux = AuxiliaryTap(model, model.arch.num_classes) if cfg.aux_weight else None
    params = [*model.parameters(), *(aux.head.parameters() if aux else ())]
    opt = weight_optimizer(cfg.optimizer, params, cfg.lr, cfg.momentum, cfg.weight_decay, nesterov=True)
    sched = CosineLRScheduler(opt, t_initial=cfg.epochs, lr_min=cfg.lr_min,
                              warmup_t=cfg.warmup_epochs, warmup_lr_init=cfg.lr / 10)
    use_kd = teacher is not None and cfg.kd_weight > 0
    if use_kd:
        teacher.eval()
    device = next(model.parameters()).device
    train_model = parallel.data_parallel(model)  # averages the gradients over ranks
    parallel.fork_rng()  # weights and auxiliary head are equal on every rank; dropout masks not
    bar = tqdm(total=cfg.epochs * len(train_loader), desc="finetune", dynamic_ncols=True,
               mininterval=1.0, disable=not parallel.is_main())
    model.train()
    for epoch in range(cfg.epochs):
        sched.step(epoch)
        set_drop_path(model, cfg.drop_path * epoch / cfg.epochs)  # DARTS' linear schedule
        sums, n = torch.zeros(3, device=device), 0
        for x, y in train_loader:
            with autocast():
                logits = train_model(x)
                loss = cross_entropy(logits, y)
                if use_kd:
                    with torch.no_grad():
                        target = teacher(x)
                    loss = (1 - cfg.kd_weight) * loss + cfg.kd_weight * distillation_loss(
                        logits, target, cfg.kd_temperature)
                aux_loss = cross_entropy(aux.logits(), y) if aux else loss.new_zeros(())
                loss = loss + cfg.aux_weight * aux_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if aux:  # outside the DDP module: averaged here
                parallel.average_gradients(aux.head.parameters())
            opt.step()
            if ema is not None:
                ema.update(model)
            sums += torch.stack([loss.detach() * y.numel(), hits(logits, y).float(),
                                 aux_loss.detach() * y.numel()])
            n += y.numel()
            bar.update(1)
        (loss_sum, correct, aux_sum), (n,) = parallel.host_totals(sums, [n])  # one sync an epoch
        if not math.isfinite(loss_sum):
            raise NonFiniteLossError(f"non-finite loss in fine-tune epoch {epoch + 1}; lower "
                                     f"finetune.lr (now {cfg.lr})")
        bar.set_postfix(loss=f"{loss_sum / n:.3f}", acc=f"{correct / n:.3f}")
        if logger is not None:
            logger.scalars({"finetune/loss": loss_sum / n, "finetune/acc": correct / n,
                            "finetune/lr": opt.param_groups[0]["lr"],
                            **({"finetune/aux_loss": aux_sum / n} if aux else {})}, epoch + 1)
    bar.close()
    for trained in [model, *([ema.module] if ema is not None else [])]:
        parallel.broadcast_buffers(trained)  # BN statistics of rank 0's last batches everywhere
    set_drop_path(model, 0.0)
    if aux is not None:
        aux.remove()  # the exported model carries no trace of the auxiliary head
    return ema.module if ema is not None else model
