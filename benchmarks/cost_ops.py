"""How many aten ops the cost penalty dispatches per architecture step (forward and backward),
against the network's own forward pass: on a GPU each op is at least one kernel launch, and on
a busy CPU each is a parallel region whose threads wait for a core.

    python -m benchmarks.cost_ops

Spaces: the digits macro space with a MACs target and with a latency target, the DARTS digits
space, and a user's ResNet-50 (`model` space, 64x64). The latency table is synthetic (its values
do not change the op count). Writes benchmarks/results/cost-ops.{json,md}.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from maskednas.latency.model import LatencyModel
from maskednas.latency.table import LatencyTable, TableEntry, grid_widths
from maskednas.ops import WidthRounding
from maskednas.pipeline.config import load_config
from maskednas.pipeline.setup import DataMeta, build_supernet
from maskednas.search.op_count import OpCounter
from maskednas.search.penalty import CostPenalty, resolve_targets
from maskednas.supernet.cost_model import ESTIMATORS

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
SPACES = {  # name -> (config, overrides, input channels, input size, targets)
    "macro digits, MACs": ("digits", [], 1, 8, {"macs": 0.5}),
    "macro digits, latency": ("digits", [], 1, 8, {"latency_ms": 0.5}),
    "darts digits, MACs": ("darts_digits", [], 1, 8, {"macs": 0.5}),
    "resnet50, MACs": ("prune_model", ["model.source=torchvision:resnet50"], 3, 64, {"macs": 0.5}),
}


def synthetic_latency(net) -> LatencyModel:
    """A table whose every part costs the product of its widths (the shape of a real one)."""
    entries = {}
    for part in net.latency_parts():
        grid = [grid_widths(size, 5) for size in part.sizes]
        values = torch.ones(())
        for axis in grid:
            values = values[..., None] * torch.tensor(axis, dtype=torch.float64)
        entries[part.key] = TableEntry(grid, values.tolist())
    return LatencyModel(net, net.latency_parts(), LatencyTable({}, entries))


def count(config: str, overrides: list[str], channels: int, size: int, fractions: dict) -> dict:
    cfg = load_config(config, overrides)
    torch.manual_seed(0)
    net = build_supernet(cfg, DataMeta("random", channels, 10, size, (0.0,) * channels,
                                       (1.0,) * channels), torch.device("cpu")).train()
    latency = synthetic_latency(net) if "latency_ms" in fractions else None
    targets = {name: f * float(COST_FIGURE[name](net, latency)) for name, f in fractions.items()}
    penalty = CostPenalty(net, targets, 1.0, latency)
    point = functools.partial(ESTIMATORS.get(cfg.search.target.estimator), rounding=WidthRounding(),
                              surrogate_temperature=cfg.search.target.surrogate_temperature)
    x = torch.randn(cfg.data.batch_size, channels, size, size)
    net(x).sum().backward()  # warm-up: lazy buffers and caches
    penalty(*point(net))[0].backward()
    with OpCounter() as forward:
        net(x)
    with OpCounter() as cost:
        penalty(*point(net))[0].backward()
    return {"network_forward_ops": forward.ops, "cost_ops": cost.ops, "batch": cfg.data.batch_size}


COST_FIGURE = {"macs": lambda net, latency: net.dense_architecture().cost().macs,
               "latency_ms": lambda net, latency: latency.dense_ms()}


def main() -> None:
    rows = {name: count(*spec) for name, spec in SPACES.items()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cost-ops.json").write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=2))
    lines = ["| space, target | cost penalty ops (forward + backward) | network forward ops (batch) |",
             "|---|---|---|"]
    lines += [f"| {name} | {r['cost_ops']:,} | {r['network_forward_ops']:,} ({r['batch']}) |"
              for name, r in rows.items()]
    (RESULTS / "cost-ops.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
