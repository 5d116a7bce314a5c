"""The command, end to end, with a latency target on networks users own: does the run end on target
as measured?

    python -m benchmarks.latency_runs                                     # 6 runs, ~20 min on 2 cores
    python -m benchmarks.latency_runs --sources torchvision:mobilenet_v2 --runtimes torch --part tv-torch
    python -m benchmarks.latency_runs --merge                             # parts -> one file

Each run is `maskednas run` (`pipeline.run`) with `configs/prune_cifar_resnet20.yaml`, the
network swapped by `model.source` (a torchvision, a timm and a user's own network), on the
CIFAR-10 subset at 32x32, with `search.targets.latency_ms.fraction=0.5` and `latency.runtime`
ONNX Runtime (CPU) or torch eager, batch 1: the table built from the network, a short search
(2 epochs: latency does not depend on how well the weights are trained), derivation, one epoch
of fine-tuning, export. Read from each run's metrics.json: the exported and the dense network
timed after the run in alternation (`pipeline.stages.latency_check`), and the table's predictions.
`off target`: measured / dense timed alongside, over the target's fraction, minus 1.
Writes benchmarks/results/latency-runs.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from maskednas.pipeline import load_config, run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SOURCES = ("torchvision:mobilenet_v2", "timm:mobilenetv3_large_100", "benchmarks.cifar_resnet:resnet20")
RUNTIMES = ("onnxruntime", "torch")
FRACTION = 0.5
SHORT = ["search.epochs=2", "finetune.epochs=1", "finetune.kd_weight=0", "model.checkpoint=null",
         f"data.path={ROOT.parent / 'shared' / 'data' / 'cifar10_subset.npz'}"]


def one(source: str, runtime: str, out: Path, overrides: list[str]) -> dict:
    name = f"{source.replace(':', '-').replace('.', '-')}-{runtime}"
    cfg = load_config(ROOT / "configs" / "prune_cifar_resnet20.yaml", [
        *SHORT, f"model.source={source}", f"latency.runtime={runtime}",
        f"search.targets={{latency_ms: {{fraction: {FRACTION}}}}}", f"out_dir={out}", f"name={name}",
        f"latency.cache_dir={out / 'tables'}", *overrides])
    start = time.perf_counter()
    metrics = run(cfg, out / name, report=lambda _: None)
    lat = metrics["latency"]
    measured = lat["exported_measured_ms"] / lat["dense_measured_ms"]
    row = {"source": source, "runtime": runtime, "round_to": cfg.derive.round_to, "overrides": overrides,
           "wall_s": time.perf_counter() - start, "threads": torch.get_num_threads(),
           "fraction": FRACTION, "latency": lat, "measured_fraction": measured,
           "off_target": measured / FRACTION - 1, "macs": metrics["macs"], "dense_macs": metrics["dense_macs"],
           "test_acc": metrics["test_acc"]}
    print(json.dumps(row), flush=True)
    return row


def table_md(rows: list[dict]) -> str:
    out = ["| network | runtime | round_to | other overrides | run | dense measured | target | predicted "
           "| derivations | measured (of dense) | off target | prediction error (as a fraction of dense) | MACs (of dense) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = r["latency"]
        out.append(f"| {r['source']} | {r['runtime']} | {r['round_to']} | {' '.join(r.get('overrides', []))} | "
                   f"{r['wall_s']:.0f} s | {lat['dense_measured_ms']:.3f} ms | {lat['target_ms']:.3f} ms | "
                   f"{lat['exported_predicted_ms']:.3f} ms | {len(lat['aimed_by_measurement']['tries'])} | "
                   f"{lat['exported_measured_ms']:.3f} ms "
                   f"({r['measured_fraction']:.3f}) | {100 * r['off_target']:+.1f}% | "
                   f"{lat['prediction_error']:+.1%} ({lat['relative_prediction_error']:+.1%}) | "
                   f"{r['macs'] / r['dense_macs']:.1%} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sources", default=",".join(SOURCES))
    p.add_argument("--runtimes", default=",".join(RUNTIMES))
    p.add_argument("--out", default=str(ROOT / "runs" / "latency-runs"))
    p.add_argument("--override", action="append", default=[], help="a config override for every run (repeatable)")
    p.add_argument("--part", default="", help="write latency-runs-<part>.json (merge later)")
    p.add_argument("--merge", action="store_true", help="merge latency-runs-*.json into one file")
    args = p.parse_args(argv)
    if args.merge:
        rows = [r for f in sorted(RESULTS.glob("latency-runs-*.json")) for r in json.loads(f.read_text())]
        name = "latency-runs"
    else:
        rows = [one(s, r, Path(args.out), args.override) for s in args.sources.split(",")
                for r in args.runtimes.split(",")]
        name = f"latency-runs-{args.part}" if args.part else "latency-runs"
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=1))
    (RESULTS / f"{name}.md").write_text(table_md(rows))
    print(table_md(rows))


if __name__ == "__main__":
    main()
