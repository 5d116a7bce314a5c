"""Dense vs exported model on the offline CIFAR-10 subset (4068 train / 1017 test images).

    python -m benchmarks.cifar_subset            # configs/cifar10_subset.yaml (GPU advised)
    python -m benchmarks.cifar_subset --cpu-small # configs/cifar10_subset_cpu.yaml: a 2-core CPU

Runs `train.py` (search -> derive -> slim -> fine-tune -> export), then trains the dense
reference (the supernet's widest single path) from scratch for as many epochs as the exported
model saw in total (search + fine-tune), with the same augmentation and evaluation. Writes
benchmarks/results/cifar_subset[-cpu-small].{json,md}.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from maskednas.export import build, load
from maskednas.pipeline import load_config, run
from maskednas.pipeline.config import FinetuneConfig
from maskednas.pipeline.setup import (TrainingContext, apply_threads, load_data, restore_supernet,
                                      seed_everything)
from maskednas.pipeline.stages import cpu_latencies
from maskednas.search.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10_subset.npz"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cpu-small", action="store_true", help="reduced space and epochs for a CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-only", action="store_true",
                   help="time the two models of the last run again (on a quiet machine), "
                        "keeping its other figures")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    tag = "cifar_subset-cpu-small" if args.cpu_small else "cifar_subset"
    overrides = [f"data.path={DATA}", f"seed={args.seed}", *args.overrides]
    config = "cifar10_subset_cpu.yaml" if args.cpu_small else "cifar10_subset.yaml"
    run_dir = ROOT / "runs" / "bench" / f"{tag}-{args.seed}"
    out = ROOT / "benchmarks" / "results"
    if args.time_only:
        result = json.loads((out / f"{tag}.json").read_text())
        state = load_checkpoint(run_dir / "search.pt", "search")
        net, cfg, meta = restore_supernet(state, "cpu")
        apply_threads(cfg)
        dense = build(net.dense_architecture(meta.mean, meta.std))  # the architecture times alike untrained
        result["latency"] = times(dense, load(run_dir / "export"), meta, cfg)
        data = load_data(cfg)
        result.update(torch_threads=torch.get_num_threads(), retimed=True,
                      train_images=len(data.y_train), test_images=len(data.y_test))
        write(out, tag, result, args.seed)
        return
    shutil.rmtree(run_dir, ignore_errors=True)  # a benchmark measures a fresh run
    start = time.perf_counter()
    ours = run(load_config(ROOT / "configs" / config, overrides), run_dir)
    pipeline_s = time.perf_counter() - start

    state = load_checkpoint(run_dir / "search.pt", "search")
    net, cfg, meta = restore_supernet(state, "cuda" if torch.cuda.is_available() else "cpu")
    device = next(net.parameters()).device
    seed_everything(cfg.seed)
    data = load_data(cfg)
    ctx = TrainingContext(cfg, data, device)
    dense = build(net.dense_architecture(meta.mean, meta.std))
    epochs = cfg.search.epochs + cfg.finetune.epochs
    start = time.perf_counter()
    dense = ctx.train(dense, FinetuneConfig(epochs=epochs, lr=cfg.finetune.lr,
                                            weight_decay=cfg.finetune.weight_decay))
    dense_s = time.perf_counter() - start
    dense_acc = ctx.evaluate(dense)["acc"]
    lat = times(dense, load(run_dir / "export", device), meta, cfg)
    result = {"device": str(device), "torch": torch.__version__, "epochs_each": epochs,
              "train_images": len(data.y_train), "test_images": len(data.y_test),
              "dense": {"macs": dense.arch.cost().macs, "params": dense.arch.cost().params,
                        "test_acc": dense_acc, "train_s": dense_s},
              "ours": {"macs": ours["macs"], "params": ours["params"], "test_acc": ours["test_acc"],
                       "slimmed_test_acc": ours["slimmed_test_acc"], "pipeline_s": pipeline_s},
              "latency": lat, "channels_last": cfg.channels_last,
              "torch_threads": torch.get_num_threads(), "overrides": overrides}
    write(out, tag, result, args.seed)


def times(dense: torch.nn.Module, slim: torch.nn.Module, meta, cfg) -> dict[str, float]:
    """Both models timed in alternation, in the run's memory format and thread count."""
    shape = (meta.in_channels, meta.input_size, meta.input_size)
    return {f"{name}_ms": ms for name, ms in cpu_latencies(
        {"dense": dense.cpu(), "slim": slim.cpu()}, shape, cfg.channels_last).items()}


def write(out: Path, tag: str, result: dict, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps(result, indent=2))
    d, o, lat = result["dense"], result["ours"], result["latency"]
    table = "\n".join([
        f"CIFAR-10 subset ({result['train_images']} train / {result['test_images']} test), "
        f"{result['device']}, torch {result['torch']}, {result['epochs_each']} training epochs "
        f"each, seed {seed}; latencies in alternation, "
        f"{'channels_last' if result['channels_last'] else 'contiguous'}, "
        f"{result['torch_threads']} threads",
        "",
        "| model | MACs | params | test acc | latency b=1 | latency b=64 |",
        "|---|---|---|---|---|---|",
        f"| dense (widest path, from scratch) | {d['macs']:,} | {d['params']:,} | {d['test_acc']:.4f} | "
        f"{lat['dense_b1_ms']:.2f} ms | {lat['dense_b64_ms']:.2f} ms |",
        f"| searched + slimmed + fine-tuned | {o['macs']:,} ({o['macs'] / d['macs']:.1%}) | "
        f"{o['params']:,} | {o['test_acc']:.4f} | {lat['slim_b1_ms']:.2f} ms "
        f"({lat['dense_b1_ms'] / lat['slim_b1_ms']:.1f}x) | {lat['slim_b64_ms']:.2f} ms "
        f"({lat['dense_b64_ms'] / lat['slim_b64_ms']:.1f}x) |",
    ])
    (out / f"{tag}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
