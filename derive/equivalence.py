"""The slimmed network must compute what the hard-masked supernet computes: a mismatch means the
search optimised another function than the one exported (a channel-mixing op the masks do not
reach), so the run stops before anything is exported."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from maskednas.derive.discretize import Derivation

RELATIVE_TOLERANCE = 1e-4  # of the output scale; float32 agreement is about 1e-7


class SlimMismatchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Equivalence:
    gap: float  # max |slimmed - hard-masked supernet| on the probe batch
    scale: float  # max |hard-masked supernet output| on it


@contextlib.contextmanager
def _full_precision(device: torch.device):
    """No TF32 convolutions or matmuls on a GPU (a default there that would blur the comparison),
    through torch's precision settings where it has them (>= 2.9), else the older flags."""
    if device.type != "cuda":
        yield
        return
    new = hasattr(torch.backends.cuda.matmul, "fp32_precision")
    settings = ([(torch.backends.cuda.matmul, "fp32_precision", "ieee"),
                 (torch.backends.cudnn.conv, "fp32_precision", "ieee")] if new else
                [(torch.backends.cuda.matmul, "allow_tf32", False), (torch.backends.cudnn, "allow_tf32", False)])
    before = [getattr(owner, name) for owner, name, _ in settings]
    try:
        for owner, name, value in settings:
            setattr(owner, name, value)
        yield
    finally:
        for (owner, name, _), value in zip(settings, before):
            setattr(owner, name, value)


@torch.no_grad()
def check_equivalence(net, derivation: Derivation, compact: torch.nn.Module,
                      probe: torch.Tensor) -> Equivalence:
    """Compare `compact` with the hard-masked `net` on `probe` (both in eval mode); raise
    `SlimMismatchError`, naming the first layer that differs where the space can tell, when the
    gap exceeds `RELATIVE_TOLERANCE` of the output scale."""
    with net.hard_masked(derivation.ops, derivation.keep), _full_precision(probe.device):
        reference = net(probe)
        gap, scale = float((reference - compact(probe)).abs().max()), float(reference.abs().max())
        if gap <= RELATIVE_TOLERANCE * scale:
            return Equivalence(gap, scale)
        where = net.first_mismatch(compact, probe, RELATIVE_TOLERANCE)
    raise SlimMismatchError(
        f"the slimmed network differs from the hard-masked supernet by {gap:.3g} (output scale "
        f"{scale:.3g}; allowed {RELATIVE_TOLERANCE:g} of it): the search optimised another network "
        f"than the one it would export" + (f"; the first layer whose output differs is {where}: an "
        f"op before it mixes channels the masks do not gate (a mean or norm over channels). List "
        f"{where} in model.ignore to leave the channels it reads unpruned" if where else ""))
