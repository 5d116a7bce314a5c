"""Peak activation memory: the largest input-plus-output activation of any conv, linear or norm
layer, in KiB of float32 at the deployment batch (`latency.batch`). Under a layer-by-layer
schedule this is the working set a device's memory must hold (MCUNet's peak-SRAM figure;
residual buffers held across a block are not counted). Users' networks (the `model` space):
each layer's widths come from its channel groups, so the figure is differentiable in the mask
gates and exact for a pruned network (tested against the exported network's own tensors). As a
maximum it never grows when a width shrinks (what derivation's bisection needs), but only the
peak layer's groups lower it; op promotion and the cheapest network rank blocks by their MACs
(the default `op_scores`)."""
from __future__ import annotations

import math

import torch

from maskednas.supernet.targets.base import CostTarget, register_cost_target
from maskednas.supernet.user_model import UserModel

BYTES = 4  # float32


@register_cost_target
class PeakMemoryKib(CostTarget):
    name, label, unit, priority = "peak_memory_kib", "peak activation memory", "KiB", 2

    @classmethod
    def unavailable(cls, space: type) -> str | None:
        if not issubclass(space, UserModel):
            return "has no per-layer activation shapes (users' networks, the model space, have them)"
        return None

    def value(self, weights, widths):
        sizes = []
        for layer in self.net.layer_widths(widths):
            per_sample = (layer.c_in * math.prod(layer.shape_in[1:]) / layer.rule.channels(layer.module, "input")
                          + layer.c_out * math.prod(layer.shape_out[1:]) / layer.rule.channels(layer.module, "output"))
            sizes.append(self.net.keep_weight(layer.name, weights) * per_sample)
        kib = self.batch * BYTES / 1024
        tensors = [s for s in sizes if torch.is_tensor(s)]
        if not tensors:
            return kib * max(sizes)
        ref = tensors[0]
        return kib * torch.stack([torch.as_tensor(s, dtype=ref.dtype, device=ref.device) for s in sizes]).amax()

    def of(self, arch) -> float:
        ops = {b: "skip" if b in arch.removed or b in arch.zeroed else "keep" for b in self.net.blocks}
        return float(self.value(self.net.one_hot(ops), {**self.net.full_widths(), **arch.widths}))

    @classmethod
    def show(cls, value: float) -> str:
        return f"{value:,.1f} KiB"
