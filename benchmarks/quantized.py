"""fp32, fp16 and int8 ONNX exports side by side: test accuracy, size on disk and ONNX Runtime
CPU latency at batch 1 and 64; and the int8 calibration methods compared on the same model.

    python -m benchmarks.quantized                     # digits default run + CIFAR subset (CPU)
    python -m benchmarks.quantized --presets digits    # one of them

Each preset runs the whole pipeline (`pipeline.run`) with export.quantize=[fp16,int8], then
re-quantizes its model.onnx with every calibration method (same training batches, same test set).
Writes benchmarks/results/quantized.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from maskednas.export.onnx_runtime import accuracy, session
from maskednas.export.quantize import CALIBRATIONS, to_int8
from maskednas.pipeline import load_config, run
from maskednas.pipeline.setup import TrainingContext, load_data, select_device

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data" / "cifar10_subset.npz"
PRESETS = {"digits": ("digits.yaml", []),
           "cifar_subset": ("cifar10_subset_cpu.yaml", [f"data.path={DATA}"])}


def weight_bytes(path: Path) -> int:
    return sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)


def measure(preset: str) -> dict:
    config, overrides = PRESETS[preset]
    cfg = load_config(ROOT / "configs" / config, [*overrides, "export.quantize=[fp16,int8]"])
    run_dir = ROOT / "runs" / "bench" / f"quantized-{preset}"
    shutil.rmtree(run_dir, ignore_errors=True)
    metrics = run(cfg, run_dir)
    folder = run_dir / "export"
    ctx = TrainingContext(cfg, load_data(cfg), select_device("cpu"))
    test = ctx.arrays("test")
    x, y = np.concatenate([b for b, _ in test]), np.concatenate([b for _, b in test])
    calibration = [b for b, _ in ctx.arrays("train", cfg.export.calibration_batches)]
    methods = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in CALIBRATIONS:
            path = Path(tmp) / f"{method}.onnx"
            to_int8(folder / "model.onnx", path, calibration, method)
            methods[method] = accuracy(session(path), x, y)
    files = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
    return {"preset": preset, "macs": metrics["macs"], "params": metrics["params"],
            "pytorch_test_acc": metrics["test_acc"], "onnx": metrics["onnx"],
            "weight_bytes": {p: weight_bytes(folder / f) for p, f in files.items()},
            "calibration": methods, "default_calibration": cfg.export.calibration}


def table(r: dict) -> str:
    fp32 = r["onnx"]["fp32"]
    lines = [f"**{r['preset']}** ({r['macs']:,} MACs, {r['params']:,} params; PyTorch test acc "
             f"{r['pytorch_test_acc']:.4f})", "",
             "| artefact | test acc | size on disk | weights | latency b=1 | latency b=64 |",
             "|---|---|---|---|---|---|"]
    for p, m in r["onnx"].items():
        lines.append(f"| {p} | {m['test_acc']:.4f} | {m['bytes'] / 1024:,.1f} KiB "
                     f"({fp32['bytes'] / m['bytes']:.2f}x smaller) | "
                     f"{r['weight_bytes'][p] / 1024:,.1f} KiB ({r['weight_bytes']['fp32'] / r['weight_bytes'][p]:.2f}x) | "
                     f"{m['latency_ms_b1']:.3f} ms | {m['latency_ms_b64']:.3f} ms |")
    lines += ["", "int8 test accuracy by calibration method: " + ", ".join(
        f"{k} {v:.4f}" for k, v in r["calibration"].items()) + f" (default: {r['default_calibration']})"]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default=",".join(PRESETS))
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    results = [measure(preset) for preset in args.presets.split(",")]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quantized.json").write_text(json.dumps(results, indent=2))
    text = (f"ONNX Runtime CPU ({torch.get_num_threads()} threads), torch {torch.__version__}\n\n"
            + "\n\n".join(table(r) for r in results))
    (RESULTS / "quantized.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
