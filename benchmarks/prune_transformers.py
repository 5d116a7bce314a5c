"""Prune a trained vision transformer (timm's VisionTransformer at DeiT-tiny's widths, 6 blocks,
on 32x32 images: benchmarks/vit.py) by this tool and by Torch-Pruning's magnitude and Taylor
pruners, at the same MACs, fine-tuned alike with distillation from the dense network.

    python -m benchmarks.prune_transformers --seeds 0    # one part: prune-vit-seed0.json
    python -m benchmarks.prune_transformers --merge      # the parts into prune-vit.{md,json}
    python -m benchmarks.prune_transformers --quick      # 1 epoch each (CI-sized)

The protocol is benchmarks/prune_resnet.py's (its docstring): 10% of the training images held
out for validation, the test set read once per final model. The dense network trains from
scratch with AdamW (lr 1e-3, weight decay 0.05, 3 warm-up epochs, cosine); ours searches heads,
MLP widths, the embedding width and each block's attention and MLP branches
(configs/prune_vit_cifar.yaml); Torch-Pruning prunes as its own ViT example does (global
ranking, the head dimensions of every head alike, MLP and embedding channels). Every pruned
network trains search + fine-tune epochs with the same AdamW recipe and distillation.
"""
from __future__ import annotations

from benchmarks.prune_resnet import ROOT, Network, main
from benchmarks.vit import vit_tiny_cifar

VIT = Network("DeiT-tiny-style ViT (6 blocks, 3 heads of 64, 8x8 patches)", "prune-vit",
              "benchmarks.vit:vit_tiny_cifar", ROOT / "configs" / "prune_vit_cifar.yaml",
              vit_tiny_cifar, {"lr": 1e-3, "warmup_epochs": 3})

if __name__ == "__main__":
    main(network=VIT, doc=__doc__, fractions=[0.5, 0.25], dense_epochs=30, search_epochs=4,
         finetune_epochs=10, methods=["ours", "tp_magnitude", "tp_taylor"])
