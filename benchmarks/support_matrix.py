"""Which networks the `model` space prunes: for each, the channel groups and residual blocks
found, and with random weights and hard masks at about half the MACs, the gap between the
hard-masked network and the physically pruned one, the analytic MACs against fvcore's count
of the pruned model, and an export -> load round trip.

    python -m benchmarks.support_matrix          # prints the README's table

tests/test_user_model.py runs the same checks (`check`) on every model listed here.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from maskednas.derive import derive, slim
from maskednas.export import save_export
from maskednas.export.flops import fvcore_report
from maskednas.supernet.user_model import ModelSpaceConfig, UserModel

MODELS = {  # source -> input size (the CIFAR ResNet is built for 32x32)
    **{f"torchvision:{n}": 64 for n in (
        "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
        "regnet_y_400mf", "resnext50_32x4d", "densenet121", "convnext_tiny")},
    **{f"timm:{n}": 64 for n in (
        "resnet26d", "efficientnet_lite0", "mobilenetv3_large_100", "convnext_atto", "regnetx_002")},
    "benchmarks.cifar_resnet:resnet20": 32,
}


@torch.no_grad()
def randomize(net: UserModel, generator: torch.Generator) -> None:
    """Every vector parameter (norm scales and shifts, layer scales, GRN, biases) and norm
    statistic away from its identity default, mask logits and keep/skip logits at random: a
    slimmer that took the wrong channels, or a block the wrong way, shows."""
    for name, p in net.model.named_parameters():
        if sum(d > 1 for d in p.shape) <= 1:  # (C,), or (C, 1, 1) as torchvision's layer scale
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2 if name.endswith("bias")
                    else torch.rand(p.shape, generator=generator) + 0.5)
    for name, b in net.model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(torch.randn(b.shape, generator=generator) * 0.1)
        elif name.endswith("running_var"):
            b.copy_(torch.rand(b.shape, generator=generator) + 0.5)
    for mask in net.masks.values():
        mask.logits.copy_(torch.randn(mask.logits.shape, generator=generator))
    for alpha in net.alphas.values():  # about one block in four skipped
        alpha.copy_(torch.tensor([1.0, 0.0]) if torch.rand((), generator=generator) < 0.75
                    else torch.tensor([0.0, 1.0]))


def check(source: str, size: int, seed: int = 0, export_to: Path | None = None) -> dict:
    """Build, randomize, derive at half the MACs, slim (and export to `export_to`, without
    ONNX); the figures the matrix reports, the pruned model, and a batch with the hard-masked
    network's outputs on it."""
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = UserModel(ModelSpaceConfig(source=source), 3, 10, size)
    left_unpruned = [str(w.message) for w in caught if "left unpruned" in str(w.message)]
    randomize(net, torch.Generator().manual_seed(seed))
    net.eval()
    dense = net.dense_architecture().cost().macs
    derivation = derive(net, 0.5 * dense)
    model = slim(net, derivation).eval()
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad(), net.hard_masked(derivation.ops, derivation.keep):
        reference = net(x)
        gap = float((model(x) - reference).abs().max())
    if export_to is None:
        fvcore_macs, fvcore_params, _ = fvcore_report(model, torch.zeros(1, 3, size, size))
    else:  # the export counts them on the model it writes
        metrics = save_export(export_to, model, {}, {}, onnx=False)
        fvcore_macs, fvcore_params = metrics["fvcore_flops"], metrics["fvcore_params"]
    return {"source": source, "groups": len(net.masks), "blocks": len(net.blocks),
            "removed": len(derivation.arch.removed), "skipped_groups": len(net.groups.skipped),
            "left_unpruned": left_unpruned, "dense_macs": dense, "macs": derivation.arch.macs,
            "params": derivation.arch.params, "fvcore_macs": fvcore_macs,
            "fvcore_params": fvcore_params, "gap": gap, "scale": float(reference.abs().max()),
            "seconds": time.perf_counter() - start, "model": model, "input": x,
            "reference": reference}


def main() -> None:
    print("| source | groups | blocks (removed) | groups left whole | MACs pruned / dense | "
          "analytic == fvcore | max gap / output scale |")
    print("|---|---|---|---|---|---|---|")
    for source, size in MODELS.items():
        r = check(source, size)
        print(f"| {source} | {r['groups']} | {r['blocks']} ({r['removed']}) | "
              f"{r['skipped_groups']} | {r['macs'] / r['dense_macs']:.3f} | "
              f"{r['macs'] == r['fvcore_macs'] and r['params'] == r['fvcore_params']} | "
              f"{r['gap'] / r['scale']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
