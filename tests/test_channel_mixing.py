"""Ops that mix channels: those a pruned channel reaches must be gated exactly (GRN, F.normalize
over channels), and any other leaves a gap between the slimmed and the hard-masked network that
stops the run, naming the layer, before anything is exported."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.support_matrix import check, randomize
from maskednas.derive import derive, slim
from maskednas.derive.equivalence import SlimMismatchError, check_equivalence
from maskednas.supernet.user_model import ModelSpaceConfig, UserModel

ROOT = Path(__file__).resolve().parents[1]


class Mixing(nn.Module):
    """conv-BN-ReLU, a channel-mixing op, conv-BN-ReLU, pool, linear."""

    def __init__(self, mix, num_classes=10, in_channels=3):
        super().__init__()
        self.mix = mix
        self.a = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU())
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.b(self.mix(self.a(x))), 1).flatten(1))


def plain_net(num_classes=10, in_channels=3):  # no residual block: no keep/skip choice
    return Mixing(lambda x: x, num_classes, in_channels)


def normalize_net(num_classes=10, in_channels=3):
    return Mixing(lambda x: F.normalize(x, dim=1), num_classes, in_channels)


def centered_net(num_classes=10, in_channels=3):  # a mean over channels: not modelled
    return Mixing(lambda x: x - x.mean(1, keepdim=True), num_classes, in_channels)


def test_normalize_over_channels_is_gated_exactly():
    r = check(f"{__name__}:normalize_net", 16)
    assert r["gap"] <= 1e-6 * r["scale"], (r["gap"], r["scale"])


def test_global_response_norm_is_gated_exactly():
    """ConvNeXt-V2's GRN averages over channels; with its weights randomised a pruned channel
    in that mean would show (measured 0.9% of the output scale without the rule)."""
    r = check("timm:convnextv2_atto", 32)
    assert r["gap"] <= 1e-5 * r["scale"], (r["gap"], r["scale"])
    assert (r["macs"], r["params"]) == (r["fvcore_macs"], r["fvcore_params"])


@pytest.mark.parametrize("source", ["timm:convnextv2_atto", "torchvision:convnext_tiny"])
def test_randomize_moves_every_vector_parameter_off_its_default(source):
    """GRN starts at zero and layer scales at 1e-6: left so, a block's body barely counts."""
    net = UserModel(ModelSpaceConfig(source=source), 3, 10, 32)
    with torch.no_grad():
        randomize(net, torch.Generator().manual_seed(0))
    vectors = [(n, p) for n, p in net.model.named_parameters() if sum(d > 1 for d in p.shape) == 1]
    assert any("grn" in n or "layer_scale" in n for n, _ in vectors)
    assert all(p.abs().min() >= 0.5 for n, p in vectors if not n.endswith("bias"))
    assert all(p.abs().max() > 0 for n, p in vectors if n.endswith("bias"))


def _derived(source: str, seed: int = 0):
    net = UserModel(ModelSpaceConfig(source=source), 3, 10, 16)
    with torch.no_grad():
        randomize(net, torch.Generator().manual_seed(seed))
    net.eval()
    derivation = derive(net, 0.5 * net.dense_architecture().cost().macs)
    return net, derivation, slim(net, derivation).eval()


def test_an_unmodelled_channel_mix_stops_the_check_naming_the_layer():
    net, derivation, compact = _derived(f"{__name__}:centered_net")
    probe = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with pytest.raises(SlimMismatchError, match=r"first layer whose output differs is b\.0.*"
                                                r"model\.ignore"):
        check_equivalence(net, derivation, compact, probe)
    net, derivation, compact = _derived(f"{__name__}:normalize_net")
    assert check_equivalence(net, derivation, compact, probe).gap <= 1e-6


def test_a_mismatched_run_stops_before_the_export(tmp_path):
    done = subprocess.run(
        [sys.executable, "train.py", "model.source=tests.test_channel_mixing:centered_net",
         "search.epochs=1", "search.warmup_epochs=0", "finetune.epochs=1", f"out_dir={tmp_path}",
         "name=run"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0
    assert "first layer whose output differs is b.0" in done.stderr, done.stderr[-2000:]
    assert not list((tmp_path / "run").glob("export*"))


class TrainOnlyNormalize(Mixing):
    """One more F.normalize in training than in eval (the trace runs in eval)."""

    def forward(self, x):
        x = F.normalize(self.a(x), dim=1)
        if self.training:
            x = F.normalize(x, dim=1)
        return self.fc(F.adaptive_avg_pool2d(self.b(x), 1).flatten(1))


def train_only_normalize_net(num_classes=10, in_channels=3):
    return TrainOnlyNormalize(lambda x: x, num_classes, in_channels)


def test_a_forward_with_other_normalize_calls_than_traced_is_refused():
    net = UserModel(ModelSpaceConfig(source=f"{__name__}:train_only_normalize_net"), 3, 10, 16)
    x = torch.randn(2, 3, 16, 16)
    net.eval()(x)  # as traced
    with pytest.raises(RuntimeError, match="called F.normalize 2 times in this forward pass, 1 when traced"):
        net.train()(x)
