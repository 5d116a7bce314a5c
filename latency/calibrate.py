"""Calibrating a table on whole networks, for a space whose parts leave some of a network out.

A user's network is timed layer by layer (latency/layer_parts.py): activations, residual adds and
pooling are not parts, the runtime fuses some layers (ONNX Runtime folds BatchNorm into the conv
before it) and each part timed alone pays a call's fixed overhead. So the whole network is not the
sum of its parts, but a smooth, growing function of it: fixed costs per call that pruning does
not remove make it convex. Three networks of the space, the dense one and those at a half and a
quarter of every width (rounded as derivation rounds: a runtime runs some widths faster than
others), timed in alternation, fix it piecewise-linearly: each is predicted at its measured
time, a network between two of them by the segment between.
"""
from __future__ import annotations

import torch

from maskednas.latency.measure import models_ms
from maskednas.latency.model import LatencyModel
from maskednas.latency.parts import LatencyPart
from maskednas.latency.table import LatencyTable


def calibrate(table: LatencyTable, net, parts: list[LatencyPart], device: torch.device, runtime: str,
              batch: int, channels_last: bool, rounds: int = 5) -> None:
    """Set `table.meta`'s `calibration_points` (sum of parts, measured whole), ascending, and
    `scale` (the dense network's ratio of the two) from `net.latency_calibration(grid step)`;
    nothing when the space has none. A point whose network measured no slower than a wider one's
    (timing noise on networks too small to tell apart) is dropped: the prediction must grow with
    width."""
    networks = net.latency_calibration(table.meta.get("grid_step", 1))
    if not networks:
        return
    for key in ("scale", "calibration_points"):
        table.meta.pop(key, None)
    model = LatencyModel(net, parts, table)  # uncalibrated: the sum of the parts
    summed = {name: model.architecture_ms(arch) for name, (_, arch) in networks.items()}
    measured = models_ms({name: m for name, (m, _) in networks.items()}, net.latency_input_shape(),
                         device, runtime, batch, channels_last, rounds=rounds)
    points: list[list[float]] = []
    for name in sorted(networks, key=lambda n: -summed[n]):  # widest first
        if not points or (summed[name] < points[0][0] and measured[name] < points[0][1]):
            points.insert(0, [summed[name], measured[name]])
    dense = max(networks, key=lambda n: summed[n])
    table.meta.update(scale=measured[dense] / summed[dense], calibration_points=points,
                      calibration={n: {"parts_ms": summed[n], "measured_ms": measured[n]} for n in networks})
