"""Latency-targeted search against MACs-targeted search, on the 2-core CPU (torch eager, batch 1).

    python -m benchmarks.latency_search                       # digits and the CIFAR-10 subset
    python -m benchmarks.latency_search --presets digits --quick

For latency targets of 1/2 and 1/3 of the dense network's table latency, a search with
`search.targets.latency_ms.fraction`, derived by the table alone (`derive.latency_corrections=0`):
the table's prediction of the exported network against its measured latency. Then MACs-targeted searches on a ladder of MACs fractions; each latency run is
compared with the MACs run whose exported network's measured latency is nearest to its own. Every
run's exported network is timed as a latency-targeted run times it (`pipeline.stages.
latency_check`: in alternation with the dense network, 100 repeats, median), right after its run.
Writes benchmarks/results/latency-search.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch

from maskednas.export import build, load
from maskednas.latency import models_ms
from maskednas.pipeline import load_config, run
from maskednas.pipeline.setup import build_supernet, data_meta, load_data

RESULTS = ROOT / "benchmarks" / "results"
CIFAR = f"data.path={ROOT.parent / 'shared' / 'data' / 'cifar10_subset.npz'}"
PRESETS = {
    "digits": ("configs/digits.yaml", [], (0.4, 0.2, 0.1, 0.05)),
    "cifar_subset": ("configs/cifar10_subset_cpu.yaml", [CIFAR], (0.25, 0.12, 0.06)),
}
LATENCY_FRACTIONS = (1 / 2, 1 / 3)
TABLE_ALONE = ["derive.latency_corrections=0"]  # what this benchmark measures: the table's prediction
QUICK = ["search.epochs=3", "search.warmup_epochs=1", "finetune.epochs=1"]


def one_run(config: str, overrides: list[str], out: Path, name: str) -> dict:
    cfg = load_config(ROOT / config, [*overrides, f"out_dir={out}", f"name={name}"])
    start = time.perf_counter()
    metrics = run(cfg, out / name, report=lambda _: None)
    wall = time.perf_counter() - start
    latency = metrics.get("latency")
    if latency is None:  # a MACs-targeted run: its network timed as latency_check times one
        model = load(out / name / "export")
        net = build_supernet(cfg, data_meta(load_data(cfg)), torch.device("cpu"))
        shape = (model.arch.in_channels, model.arch.input_size, model.arch.input_size)
        timed = models_ms({"exported": model, "dense": build(net.dense_architecture())}, shape,
                          torch.device("cpu"), "torch", 1, cfg.channels_last)
        latency = {"exported_measured_ms": timed["exported"], "dense_measured_ms": timed["dense"]}
    return {"name": name, "wall_s": wall, "test_acc": metrics["test_acc"], "macs": metrics["macs"],
            "dense_macs": metrics["dense_macs"], "latency": latency}


def preset(name: str, quick: bool, out: Path) -> dict:
    config, extra, macs_fractions = PRESETS[name]
    extra = [*extra, *TABLE_ALONE, *(QUICK if quick else []), f"latency.cache_dir={out / 'tables'}"]
    runs = []
    for kind, key, fractions in (("latency", "latency_ms", LATENCY_FRACTIONS),
                                 ("macs", "macs", macs_fractions)):
        for f in fractions:
            runs.append({"kind": kind, "fraction": f, **one_run(
                config, [*extra, f"search.targets={{{key}: {{fraction: {f}}}}}"], out,  # this target alone
                f"{name}-{kind}{f:.3g}")})
            print(json.dumps(runs[-1]), flush=True)
    first = runs[0]["latency"]
    return {"preset": name, "config": config, "dense_measured_ms": first["dense_measured_ms"],
            "dense_predicted_ms": first["dense_predicted_ms"], "runs": runs}


def of_dense(r: dict) -> float:
    """The exported network's measured latency over the dense network's timed alongside it:
    comparable between runs, whose absolute timings drift with the shared machine's load."""
    return r["latency"]["exported_measured_ms"] / r["latency"]["dense_measured_ms"]


def markdown(results: list[dict]) -> str:
    lines = ["# Latency-targeted vs MACs-targeted search (2-core CPU, torch eager, batch 1)", "",
             "Command: `python -m benchmarks.latency_search`. `predicted`: the latency table's "
             "figure of the exported network; `measured`: the exported network timed after its "
             "run (lowest of 10 medians of 30 runs, 0.5 s apart, in alternation with the dense "
             "network). One seed per run. Each latency-targeted "
             "run is set against the MACs-targeted run whose network measured nearest to it, as a "
             "fraction of the dense network timed alongside each (absolute milliseconds of "
             "different runs are not comparable here). "
             "`error vs dense`: the prediction's error as a fraction of the dense network timed "
             "alongside, free of the machine's drift between the table's measurement and the "
             "model's (this shared VM runs whole seconds up to 2x slower).", ""]
    for res in results:
        lines += [f"## {res['preset']} (`{res['config']}`): dense network "
                  f"{res['dense_measured_ms']:.3f} ms measured, {res['dense_predicted_ms']:.3f} ms "
                  f"predicted", "",
                  "| run | target | MACs (of dense) | predicted ms | measured ms | error | error vs dense | measured / dense | test acc |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in res["runs"]:
            lat = r["latency"]
            pred = f"{lat['exported_predicted_ms']:.3f}" if "prediction_error" in lat else ""
            err = f"{lat['prediction_error']:+.1%}" if "prediction_error" in lat else ""
            rel = f"{lat['relative_prediction_error']:+.1%}" if "prediction_error" in lat else ""
            target = (f"latency {r['fraction']:.3g} of dense" if r["kind"] == "latency"
                      else f"MACs {r['fraction']:g} of dense")
            lines.append(f"| {r['name']} | {target} | {r['macs']:,} ({r['macs'] / r['dense_macs']:.1%}) "
                         f"| {pred} | {lat['exported_measured_ms']:.3f} | {err} | {rel} | {of_dense(r):.2f} | "
                         f"{r['test_acc']:.4f} |")
        lines += ["", "| latency run | measured / dense | test acc | nearest MACs run | its measured / dense | its test acc |",
                  "|---|---|---|---|---|---|"]
        macs_runs = [r for r in res["runs"] if r["kind"] == "macs"]
        for r in res["runs"]:
            if r["kind"] == "latency":
                m = min(macs_runs, key=lambda m: abs(of_dense(m) - of_dense(r)))
                lines.append(f"| {r['name']} | {of_dense(r):.2f} | {r['test_acc']:.4f} | "
                             f"{m['name']} | {of_dense(m):.2f} | {m['test_acc']:.4f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--quick", action="store_true", help="tiny epochs (a smoke test of the script)")
    p.add_argument("--out", default=str(ROOT / "runs" / "latency-bench"))
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the markdown from the saved JSON, running nothing")
    args = p.parse_args()
    stem = "latency-search-quick" if args.quick else "latency-search"
    if args.report_only:
        results = json.loads((RESULTS / f"{stem}.json").read_text())
    else:
        torch.set_num_threads(2)
        results = [preset(name, args.quick, Path(args.out)) for name in args.presets]
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2))
    (RESULTS / f"{stem}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
