"""Mixed precision as an on/off switch, shared by the search and every training loop."""
from __future__ import annotations

import contextlib

import torch


def autocast_factory(device: torch.device, enabled: bool):
    """A zero-argument context factory: bf16 autocast when AMP is on, else a null context."""
    if not enabled:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
