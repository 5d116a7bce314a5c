"""Calibrating a table on whole networks, for a space whose parts leave some of a network out.

A user's network is timed layer by layer (latency/layer_parts.py): activations, residual adds and
pooling are not parts, the runtime fuses some layers (ONNX Runtime folds BatchNorm into the conv
before it) and each part timed alone pays a call's fixed overhead. So the whole network is not the
sum of its parts, but close to a line in it: `whole = scale * sum(parts) + offset`, the offset
being the fixed cost per call that pruning does not remove. Two networks of the space, the dense
one and one at a quarter of every width (rounded as derivation rounds: a runtime runs some
widths faster than others), timed in alternation, fix the line; a network between
them is predicted by it, and both are predicted at their measured time.
"""
from __future__ import annotations

import torch

from maskednas.latency.measure import models_ms
from maskednas.latency.model import LatencyModel
from maskednas.latency.parts import LatencyPart
from maskednas.latency.table import LatencyTable


def calibrate(table: LatencyTable, net, parts: list[LatencyPart], device: torch.device, runtime: str,
              batch: int, channels_last: bool, rounds: int = 5) -> None:
    """Set `table.meta`'s scale and offset_ms from `net.latency_calibration(grid step)` (nothing
    when the space has none). One network: a scale alone; a fitted scale of at most 0 (timing
    noise on networks too small to tell apart): the scale alone of the dense network."""
    networks = net.latency_calibration(table.meta.get("grid_step", 1))
    if not networks:
        return
    for key in ("scale", "offset_ms", "floor_scale"):
        table.meta.pop(key, None)
    model = LatencyModel(net, parts, table)  # unscaled: the sum of the parts
    summed = {name: model.architecture_ms(arch) for name, (_, arch) in networks.items()}
    measured = models_ms({name: m for name, (m, _) in networks.items()}, net.latency_input_shape(),
                         device, runtime, batch, channels_last, rounds=rounds)
    names = sorted(networks, key=lambda n: -summed[n])
    big, small = names[0], names[-1]
    scale = measured[big] / summed[big]
    offset, floor = 0.0, 0.0
    if small != big and summed[big] > summed[small]:
        fitted = (measured[big] - measured[small]) / (summed[big] - summed[small])
        if fitted > 0:
            scale, offset = fitted, measured[big] - fitted * summed[big]
            # below the smaller network, the line through it and zero: never 0 ms or less
            floor = measured[small] / summed[small]
    table.meta.update(scale=scale, offset_ms=offset, floor_scale=floor,
                      calibration={n: {"parts_ms": summed[n], "measured_ms": measured[n]} for n in networks})
