"""What pruning a large network costs on this machine: building the `model` space (tracing,
Torch-Pruning's dependency graph, the fvcore check of the cost model), a few bilevel search
steps (weights on one batch, masks and keep/skip on another, first order), derivation at half
the MACs with physical pruning, and the peak memory of the process. Random weights and inputs:
the figures are times, not accuracy.

    python -m benchmarks.prune_timing                          # torchvision resnet50, 224x224
    python -m benchmarks.prune_timing --source timm:resnet26d --size 160

Writes benchmarks/results/prune-timing-<name>.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from maskednas.derive import derive, slim
from maskednas.export.flops import fvcore_report
from maskednas.export.latency import latencies_ms
from maskednas.search.architect import Architect
from maskednas.search.penalty import CostPenalty
from maskednas.supernet.user_model import ModelSpaceConfig, UserModel


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="torchvision:resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    r = {"source": args.source, "size": args.size, "batch": args.batch,
         "threads": torch.get_num_threads()}

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = UserModel(ModelSpaceConfig(source=args.source), 3, args.classes, args.size)
    r["build_s"] = time.perf_counter() - start
    r["groups"], r["blocks"] = len(net.masks), len(net.blocks)
    dense = net.dense_architecture().cost()
    target = 0.5 * dense.macs
    architect = Architect(net, CostPenalty(net, {"macs": target}, 2.0), lr=0.1)
    weights = torch.optim.SGD(net.weight_parameters(), lr=0.01, momentum=0.9)
    batch = lambda: (torch.randn(args.batch, 3, args.size, args.size),
                     torch.randint(0, args.classes, (args.batch,)))
    times = []
    for _ in range(args.steps + 1):  # the first step warms up
        train, val = batch(), batch()
        start = time.perf_counter()
        weights.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(train[0]), train[1]).backward()
        weights.step()
        architect.step(train, val)
        times.append(time.perf_counter() - start)
    r["search_step_s"] = sum(times[1:]) / args.steps

    start = time.perf_counter()
    net.eval()
    derivation = derive(net, target)
    model = slim(net, derivation).eval()
    r["derive_slim_s"] = time.perf_counter() - start
    example = torch.zeros(1, 3, args.size, args.size)
    r["dense_macs"], r["macs"] = dense.macs, derivation.arch.macs
    r["fvcore_macs"] = fvcore_report(model, example)[0]
    ms = latencies_ms({"dense": net.distillation_teacher(), "pruned": model},
                      (1, 3, args.size, args.size), repeats=10, warmup=3)
    r["dense_ms_b1"], r["pruned_ms_b1"] = ms["dense"], ms["pruned"]
    r["peak_rss_gib"] = peak_rss_gib()

    name = args.source.split(":")[-1]
    table = "\n".join([
        f"Pruning {args.source} at {args.size}x{args.size} to half its MACs on this CPU "
        f"({r['threads']} threads, batch {args.batch}, random weights)", "",
        "| step | result |", "|---|---|",
        f"| build the space (trace, {r['groups']} groups, {r['blocks']} blocks, fvcore check) | "
        f"{r['build_s']:.1f} s |",
        f"| one search step (weights + masks/keep-skip, first order) | {r['search_step_s']:.1f} s |",
        f"| derive + physical pruning | {r['derive_slim_s']:.1f} s |",
        f"| MACs dense -> pruned (fvcore on the pruned model) | {r['dense_macs'] / 1e9:.2f} G -> "
        f"{r['macs'] / 1e9:.2f} G ({r['fvcore_macs'] / 1e9:.2f} G) |",
        f"| CPU latency, batch 1, dense -> pruned | {r['dense_ms_b1']:.0f} ms -> "
        f"{r['pruned_ms_b1']:.0f} ms |",
        f"| peak resident memory of the process | {r['peak_rss_gib']:.2f} GiB |"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"prune-timing-{name}.json").write_text(json.dumps(r, indent=2))
    (args.out / f"prune-timing-{name}.md").write_text(table + "\n")
    print(table)
    return r


if __name__ == "__main__":
    main()
