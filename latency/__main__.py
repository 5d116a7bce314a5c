"""Build (or find in the cache) the latency table of a config's search space, on the device
and runtime its `latency` section names, and print what it predicts.

    python -m latency --config configs/digits.yaml latency.device=cpu latency.batch=1
    python -m latency --config configs/digits.yaml latency.device=cuda --out gpu_table.json

A table measured on the machine the model will run on (`--out`) can be given to a search on
another machine with `latency.table=gpu_table.json`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from pipeline.config import load_config
from pipeline.setup import apply_threads, build_supernet, data_meta, latency_model, load_data


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/digits.yaml")
    p.add_argument("--out", help="also write the table to this file")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. latency.batch=8")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    apply_threads(cfg)
    net = build_supernet(cfg, data_meta(load_data(cfg)), torch.device("cpu"))
    start = time.perf_counter()
    model = latency_model(cfg, net, always=True)
    m = model.meta
    print(f"{len(model.parts)} parts, {m['device']}, {m['runtime']}, batch {m['batch']}, "
          f"{m['threads']} thread(s) ({time.perf_counter() - start:.1f}s)")
    print(f"dense network {model.dense_ms():.4g} ms; fastest reachable "
          f"{model.fastest_ms(cfg.derive.min_channels):.4g} ms (table predictions)")
    if args.out:
        model.table.save(Path(args.out))
        print(f"written to {args.out}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, KeyError, OSError) as e:
        sys.exit(f"error: {' '.join(str(e).split())}")
