"""Latency targets on torchvision networks at 224x224, batch 1: does a network derived for a
latency target run at that latency, and what does a latency target buy over MACs?

    python -m benchmarks.latency_models                                  # all, ~1 h on 2 cores
    python -m benchmarks.latency_models --models mobilenet_v2 --runtimes onnxruntime --part mnv2
    python -m benchmarks.latency_models --merge                          # parts -> one file

For each network and runtime (ONNX Runtime CPU, torch eager): the `model` space's latency table
is measured and calibrated on the dense, half- and quarter-width networks (its build time
recorded). For latency targets of 1/2 and 1/3 of the dense network's table latency, two networks
are derived: by the table alone, and aimed by measurement as the command does
(`derive.latency_corrections`, latency/aim.py). Every network is then timed in alternation with
the dense one in the same process, runtime and memory format (`latency.models_ms`: the lowest of
10 alternating medians), beside Torch-Pruning's group magnitude pruner (global L2) pruned to the
aimed network's MACs. For ResNet-50 and MobileNetV2 on each runtime, the 1/2 target derived by
the table with widths rounded to 1, 8, 16 and 32 channels (`derive.round_to`): what chooses each
runtime's default rounding (`latency.ROUND_TO`). Tables are measured on grids of widths rounded to
that default, the widths derivation produces.

No search runs here: timing does not depend on the weights, and a 224x224 search does not fit a
2-core CPU. The derivation ranks channels by random mask logits (seeded), so the widths it picks
vary from group to group as a search's would; which network a search would pick at the target is
the search benchmarks' question (benchmarks/prune_resnet.py), this one asks whether the table's
prediction holds on the exported network. Writes benchmarks/results/latency-models.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from pathlib import Path

import torch

from maskednas.derive import derive, slim
from maskednas.derive.baselines import torch_pruning_to_target
from maskednas.derive.discretize import budget
from maskednas.export.flops import fvcore_report
from maskednas.latency import ROUND_TO, LatencyModel, measure_table, models_ms
from maskednas.latency.aim import aim_by_measurement
from maskednas.latency.calibrate import calibrate
from maskednas.supernet.user_model import ModelSpaceConfig, UserModel

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("resnet50", "mobilenet_v2", "efficientnet_b0")
RUNTIMES = ("onnxruntime", "torch")
FRACTIONS = (1 / 2, 1 / 3)
ROUNDINGS = (1, 8, 16, 32)
ROUNDING_MODELS = ("resnet50", "mobilenet_v2")
AIM_CORRECTIONS = 2  # derive.latency_corrections' default


def magnitude_pruned(net: UserModel, macs: float) -> torch.nn.Module:
    import torch_pruning as tp
    model = copy.deepcopy(net.teacher[0]).eval()
    return torch_pruning_to_target(model, net.example, macs, tp.importance.GroupMagnitudeImportance(p=2),
                                   global_pruning=True, steps=100)


def one(name: str, runtime: str, size: int, seed: int, grid_points: int, rounds: int,
        round_to: int | None = None) -> dict:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = UserModel(ModelSpaceConfig(source=f"torchvision:{name}"), 3, 1000, size).eval()
    for mask in net.masks.values():
        mask.logits.data.normal_()
    parts = net.latency_parts()
    start = time.perf_counter()
    step = ROUND_TO[runtime] if round_to is None else round_to
    table = measure_table("model", parts, torch.device("cpu"), runtime, 1, False, grid_points, rounds=3,
                          grid_step=step)
    calibrate(table, net, parts, torch.device("cpu"), runtime, 1, False)
    build_s = time.perf_counter() - start
    model = LatencyModel(net, parts, table)
    dense_macs = fvcore_report(net.teacher[0], net.example)[0]
    row = {"model": name, "runtime": runtime, "size": size, "seed": seed, "threads": torch.get_num_threads(),
           "parts": len(parts), "table_entries": len(table.entries), "grid_points": grid_points,
           "round_to": step,
           "table_build_s": build_s, "scale": table.meta["scale"], "calibration_points": table.meta["calibration_points"],
           "calibration": table.meta["calibration"], "dense_macs": dense_macs,
           "dense_table_ms": model.dense_ms(), "targets": [], "rounding": []}
    shape = tuple(net.example.shape[1:])

    def derived(fraction: float, round_to: int = step):  # the table's derivation at this fraction
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d = derive(net, budget("latency_ms", net, fraction * model.dense_ms(), model), round_to=round_to)
            return d, slim(net, d).eval()

    def measured_fraction(d) -> float:  # as the command times a derived network (pipeline/stages.py)
        ms = models_ms({"derived": slim(net, d).eval(), "dense": net.teacher[0]}, shape, torch.device("cpu"),
                       runtime, 1, False)
        return ms["derived"] / ms["dense"]

    for fraction in FRACTIONS:
        d, table_only = derived(fraction)
        aimed = aim_by_measurement(lambda ms: derived(ms / model.dense_ms())[0], measured_fraction,
                                   fraction * model.dense_ms(), model.dense_ms(), AIM_CORRECTIONS,
                                   fastest_ms=model.fastest_ms())
        ours = slim(net, aimed.derivation).eval()
        macs = fvcore_report(ours, net.example)[0]
        theirs = magnitude_pruned(net, macs)
        their_macs = fvcore_report(theirs, net.example)[0]
        ms = models_ms({"dense": net.teacher[0], "table": table_only, "ours": ours, "magnitude": theirs}, shape,
                       torch.device("cpu"), runtime, 1, False, rounds=rounds)
        measured = ms["ours"] / ms["dense"]
        row["targets"].append({
            "fraction": fraction, "predicted_ms": model.architecture_ms(d.arch),
            "table_measured_fraction": ms["table"] / ms["dense"],
            "table_off_target": ms["table"] / ms["dense"] / fraction - 1, "aim_tries": aimed.tries,
            "macs": macs, "magnitude_macs": their_macs, "measured_ms": ms,
            "measured_fraction": measured, "off_target": measured / fraction - 1,
            "speedup": ms["dense"] / ms["ours"], "macs_ratio": dense_macs / macs,
            "speedup_per_macs_ratio": (ms["dense"] / ms["ours"]) / (dense_macs / macs),
            "magnitude_speedup": ms["dense"] / ms["magnitude"],
            "magnitude_speedup_per_macs_ratio": (ms["dense"] / ms["magnitude"]) / (dense_macs / their_macs)})
        print(json.dumps(row["targets"][-1]), flush=True)
    if name in ROUNDING_MODELS:
        models, predicted = {"dense": net.teacher[0]}, {}
        for r in ROUNDINGS:
            d, models[f"round_to={r}"] = derived(FRACTIONS[0], r)
            predicted[r] = model.architecture_ms(d.arch)
        ms = models_ms(models, shape, torch.device("cpu"), runtime, 1, False, rounds=rounds)
        row["rounding"] = [{"round_to": r, "predicted_ms": predicted[r], "measured_ms": ms[f"round_to={r}"],
                            "dense_ms": ms["dense"], "measured_fraction": ms[f"round_to={r}"] / ms["dense"]}
                           for r in ROUNDINGS]
        print(json.dumps(row["rounding"]), flush=True)
    return row


def table_md(rows: list[dict]) -> str:
    out = ["| network | runtime | round_to | table build | target | table alone: predicted, measured (of dense), "
           "off target | aimed by measurement: derivations, measured (of dense), off target | MACs ratio | speed-up "
           "| speed-up / MACs ratio | TP magnitude, same MACs: speed-up (/ MACs ratio) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for t in row["targets"]:
            out.append(f"| {row['model']} | {row['runtime']} | {row['round_to']} | {row['table_build_s']:.0f} s | "
                       f"1/{round(1 / t['fraction'])} | {t['predicted_ms']:.2f} ms, "
                       f"{t['measured_ms']['table']:.2f} ms ({t['table_measured_fraction']:.3f}), "
                       f"{100 * t['table_off_target']:+.1f}% | {len(t['aim_tries'])}, "
                       f"{t['measured_ms']['ours']:.2f} ms ({t['measured_fraction']:.3f}), "
                       f"{100 * t['off_target']:+.1f}% | {t['macs_ratio']:.2f}x | {t['speedup']:.2f}x | "
                       f"{t['speedup_per_macs_ratio']:.2f} | {t['magnitude_speedup']:.2f}x "
                       f"({t['magnitude_speedup_per_macs_ratio']:.2f}) |")
    rounding = [r for r in rows if r["rounding"]]
    if rounding:
        out += ["", "Widths rounded (`derive.round_to`), target 1/2 of the dense latency:", "",
                "| network | runtime | table's grid step | round_to | predicted | measured | of dense (measured alongside) |",
                "|---|---|---|---|---|---|---|"]
        for row in rounding:
            out += [f"| {row['model']} | {row['runtime']} | {row['round_to']} | {r['round_to']} | {r['predicted_ms']:.2f} ms | "
                    f"{r['measured_ms']:.2f} ms | {r['measured_fraction']:.3f} |" for r in row["rounding"]]
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--runtimes", default=",".join(RUNTIMES))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--round-to", type=int, default=None,
                   help="the table's grid step and the targets' rounding (default: latency.ROUND_TO's)")
    p.add_argument("--grid-points", type=int, default=4)
    p.add_argument("--rounds", type=int, default=10, help="alternating medians per timing")
    p.add_argument("--part", default="", help="write latency-models-<part>.json (merge later)")
    p.add_argument("--merge", action="store_true", help="merge latency-models-*.json into one file")
    args = p.parse_args(argv)
    if args.merge:
        rows = [r for f in sorted(RESULTS.glob("latency-models-*.json")) for r in json.loads(f.read_text())]
        name = "latency-models"
    else:
        rows = [one(m, r, args.size, args.seed, args.grid_points, args.rounds, args.round_to)
                for m in args.models.split(",") for r in args.runtimes.split(",")]
        name = f"latency-models-{args.part}" if args.part else "latency-models"
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=1))
    (RESULTS / f"{name}.md").write_text(table_md(rows))
    print(table_md(rows))


if __name__ == "__main__":
    main()
