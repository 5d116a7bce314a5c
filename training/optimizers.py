"""The weights' optimizer of the search and of fine-tuning: SGD (convolutional networks, the
default) or AdamW (transformers, which SGD trains poorly). `momentum` is SGD's momentum or
AdamW's beta1, so one setting means the same thing under either."""
from __future__ import annotations

import torch

OPTIMIZERS = ("sgd", "adamw")


def weight_optimizer(name: str, params, lr: float, momentum: float, weight_decay: float,
                     nesterov: bool = False) -> torch.optim.Optimizer:
    """>>> import torch
    >>> weight_optimizer("adamw", [torch.zeros(1, requires_grad=True)], 1e-3, 0.9, 0.05).defaults["betas"]
    (0.9, 0.999)
    """
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=nesterov and momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    raise ValueError(f"the weights' optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
