"""Training a supernet for every budget at once (`search.strategy=sandwich`), as BigNAS and
Once-for-All do: each step trains the largest subnet, the smallest and `random_subnets` drawn
uniformly (`supernet.subnets.SubnetSpace`), the gradients of all summed into one weight update.
The largest learns from the labels (or from the user's network, `search.kd_weight`); the others
from the largest's outputs (in-place distillation, KL at temperature 1), which BigNAS found to
keep small subnets from overfitting the labels. No architecture step runs: op logits and mask
logits keep their initial values (the mask logits fix each group's channel order: in the model
space, `model.mask_init_from=magnitude` orders them by importance, as Once-for-All sorts its
channels). Warm-up epochs (`search.warmup_epochs`) train the largest subnet alone, as
Once-for-All trains the full network before it shrinks.

The subnets are then read off without retraining (`search.front`), with BatchNorm statistics
re-estimated per subnet: the running statistics gathered here describe a mix of widths.
"""
from __future__ import annotations

import torch
from tqdm import tqdm

from maskednas import parallel
from maskednas.search.loop import Searcher
from maskednas.supernet.subnets import SubnetSpace
from maskednas.training.losses import cross_entropy, distillation_loss, hits


class SandwichSearcher(Searcher):
    """The search loop with the sandwich rule as its step (checkpoints, resume, the schedule,
    the finite checks and logging are the loop's)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if parallel.size() > 1:
            raise ValueError("search.strategy=sandwich runs in one process (each step runs "
                             "several subnets, which DistributedDataParallel would reduce once "
                             "each); run it without torchrun")

    def sandwich_step(self, space: SubnetSpace, x: torch.Tensor, y: torch.Tensor,
                      largest_only: bool = False) -> torch.Tensor:
        """One weight update from the largest, the smallest and the random subnets (the largest
        alone with `largest_only`); returns the largest's and the smallest's summed loss and
        correct answers over the batch, on the device (zeros for the smallest when it did not run)."""
        cfg = self.cfg.search.sandwich
        weights = self.w_opt.param_groups[0]["params"]
        self.w_opt.zero_grad(set_to_none=True)
        subnets = [space.largest()] if largest_only else [
            space.largest(), space.smallest(), *(space.sample() for _ in range(cfg.random_subnets))]
        teacher, stats = None, []
        for i, subnet in enumerate(subnets):
            space.activate(subnet)
            with self.autocast():
                logits = self.net(x)
            if teacher is None:
                loss, teacher = self.loss_fn(logits, x, y), logits.detach()
            elif cfg.inplace_distillation:
                loss = distillation_loss(logits, teacher, 1.0)
            else:
                loss = cross_entropy(logits, y)
            # subnets skip ops: their weights get no gradient from this subnet
            loss.backward(inputs=[w for w in weights if w.requires_grad])
            if i < 2:
                stats += [loss.detach().float() * y.numel(), hits(logits.detach(), y).float()]
        self.net.soft_mask()
        torch.nn.utils.clip_grad_norm_(weights, self.cfg.search.grad_clip)
        self.w_opt.step()
        out = torch.stack(stats)
        return out if len(out) == 4 else torch.cat([out, torch.zeros_like(out)])

    def run_epoch(self, bar: tqdm) -> dict[str, float]:
        self.net.train()
        self.w_sched.step(self.epoch)
        s = self.cfg.search
        space = SubnetSpace(self.net, s.sandwich.width_fractions, self.rounding)
        sums, n = torch.zeros(4, device=self.device), 0
        warming_up = self.epoch < s.warmup_epochs
        for x, y in self.train_loader:
            sums += self.sandwich_step(space, x, y, largest_only=warming_up)
            n += y.numel()
            self.step += 1
            bar.update(1)
            if self.step % self.cfg.log_every == 0:
                self._progress(bar, sums, n)
        # the loop's own reading of four sums (one sync; a non-finite loss stops the search)
        largest_loss, largest_acc, smallest_loss, smallest_acc = self._means(sums, [n, n])
        macs = lambda subnet: float(space.architecture(subnet).cost().macs)
        smallest = (float("nan"),) * 2 if warming_up else (smallest_loss, smallest_acc)
        return {"epoch": self.epoch, "train_loss": largest_loss, "train_acc": largest_acc,
                "smallest_loss": smallest[0], "smallest_acc": smallest[1],
                "w_lr": self.w_opt.param_groups[0]["lr"],
                "largest_macs": macs(space.largest()), "smallest_macs": macs(space.smallest())}

    def _progress(self, bar: tqdm, sums: torch.Tensor, n: int) -> None:
        loss, acc, _, smallest_acc = self._means(sums, [n, n])
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", smallest_acc=f"{smallest_acc:.3f}")

    def _log(self, m: dict[str, float]) -> None:
        if self.logger is None:
            return
        self.logger.scalars({"loss/largest": m["train_loss"], "loss/smallest": m["smallest_loss"],
                             "acc/largest": m["train_acc"], "acc/smallest": m["smallest_acc"],
                             "lr/weights": m["w_lr"]}, self.epoch)
