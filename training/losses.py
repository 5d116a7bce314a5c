"""Losses computed in at least float32: autocast hands back bf16 logits, float64 stays float64
(the gradient checks in the tests run in float64)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite: training stops (the last good checkpoint is kept)."""


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def per_target(logits: torch.Tensor) -> torch.Tensor:
    """Logits [targets, classes]: a language model's [batch, sequence, vocabulary] flattened, so
    that every token is one target (losses are means per token)."""
    return logits.flatten(0, -2) if logits.dim() > 2 else logits


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return F.cross_entropy(at_least_float32(per_target(logits)), y.flatten(), reduction=reduction)


def hits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """How many targets (images, or tokens) the logits' top class hits, as a device tensor."""
    return (logits.argmax(-1) == y).sum()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target KL divergence, scaled by T^2 to keep gradient magnitudes."""
    return F.kl_div(F.log_softmax(at_least_float32(per_target(student)) / temperature, 1),
                    F.softmax(at_least_float32(per_target(teacher)) / temperature, 1),
                    reduction="batchmean") * temperature ** 2
