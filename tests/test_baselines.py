"""Baselines at equal MACs: uniform width, L1-norm filter pruning, random architectures,
Torch-Pruning, and the benchmark that compares them with ours (quick mode)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import randomize, tiny_space
from maskednas.export import build
from maskednas.export.flops import fvcore_report
from maskednas.derive.slim import slim
from maskednas.derive.baselines import (filter_l1_scores, l1_filter_pruning, load_dense_weights,
                                        random_architecture, torch_pruning_magnitude,
                                        torch_pruning_to_measurement, uniform_width)
from maskednas.supernet import MacroSupernet, StageSpec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def backbone():
    torch.manual_seed(0)
    space = tiny_space(candidates=["conv_3x3"], first_candidates=["conv_3x3"], stem=16,
                       stages=[StageSpec(16, 2, 1), StageSpec(32, 2, 2)])
    return MacroSupernet(space, 1, 10, 8)


def dense_macs(net) -> float:
    return net.architecture(net.derive_ops(), net.full_widths()).cost().macs


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_uniform_width_scales_every_group_alike_near_the_target(backbone, fraction):
    target = fraction * dense_macs(backbone)
    d = uniform_width(backbone, target)
    assert abs(d.arch.cost().macs - target) <= 0.1 * target  # one width step on 16 channels
    ratios = [len(k) / backbone.masks[g].channels for g, k in d.keep.items()]
    assert max(ratios) - min(ratios) <= 1 / 16 + 1e-9  # one factor, up to rounding


def test_l1_pruning_keeps_the_largest_filters(backbone):
    with torch.no_grad():  # make channel j of every group have L1 norm growing with j
        for m in backbone.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.arange(m.out_channels, dtype=torch.float).view(-1, 1, 1, 1)
                               .expand_as(m.weight))
    d = l1_filter_pruning(backbone, 0.3 * dense_macs(backbone))
    scores = filter_l1_scores(backbone, d.ops)
    for group, kept in d.keep.items():
        assert kept.tolist() == list(range(backbone.masks[group].channels - len(kept),
                                           backbone.masks[group].channels))
        assert torch.equal(scores[group], scores[group].sort().values)  # the rigged ordering


def test_dense_weights_round_trip_through_the_backbone(backbone):
    randomize(backbone)
    ops = backbone.derive_ops()
    trained = build(backbone.architecture(ops, backbone.full_widths())).eval()
    with torch.no_grad():
        for p in trained.parameters():
            p.normal_()
    load_dense_weights(backbone, trained, ops)
    d = uniform_width(backbone, dense_macs(backbone))  # target = dense: keeps everything
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(slim(backbone, d).eval()(x), trained(x), atol=1e-5)


def test_random_architectures_meet_the_target_and_differ_by_seed():
    space = tiny_space(stem=16, stages=[StageSpec(16, 2, 1), StageSpec(32, 2, 2)])
    net = MacroSupernet(space, 1, 10, 8)
    target = 0.15 * dense_macs(net)  # reachable whichever ops are drawn
    archs = [random_architecture(net, target, torch.Generator().manual_seed(s)).arch
             for s in range(3)]
    assert all(abs(a.cost().macs - target) <= 0.03 * target for a in archs)
    assert len({a.to_json() for a in archs}) == 3


def test_torch_pruning_reaches_the_target(backbone):
    model = build(backbone.architecture(backbone.derive_ops(), backbone.full_widths()))
    example = torch.randn(1, 1, 8, 8)
    target = 0.4 * dense_macs(backbone)
    pruned = torch_pruning_magnitude(model, example, target)
    macs = fvcore_report(pruned, example)[0]
    assert 0.9 * target <= macs <= target
    assert pruned(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_torch_pruning_prunes_a_vit_within_its_heads_and_keeps_the_classifier():
    """timm's attention as Torch-Pruning's ViT example prunes it: every head of a layer keeps as
    many dimensions, and each Attention is told its new widths, so the pruned network runs."""
    from benchmarks.vit import vit_micro
    model, example = vit_micro().eval(), torch.zeros(1, 3, 32, 32)
    target = 0.5 * fvcore_report(model, example)[0]
    pruned = torch_pruning_magnitude(model, example, target)
    assert 0.9 * target <= fvcore_report(pruned, example)[0] <= target
    for attn in (b.attn for b in pruned.blocks):
        assert attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim == 3 * attn.attn_dim
    assert any(b.attn.head_dim < 12 for b in pruned.blocks) and pruned.head.out_features == 10
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_torch_pruning_is_re_aimed_until_the_measured_figure_meets_the_goal(backbone):
    """A measurement that is not proportional to MACs (here its square root, as latency of a
    network whose fixed costs do not shrink): pruned to the goal's MACs it measures 19% over,
    so the pruner is aimed again until it measures within 5%; the dense model is left whole."""
    import torch_pruning as tp
    dense = build(backbone.architecture(backbone.derive_ops(), backbone.full_widths())).eval()
    example = torch.randn(1, 1, 8, 8)
    full = fvcore_report(dense, example)[0]
    aimed = torch_pruning_to_measurement(
        dense, example, 0.7, lambda m: (fvcore_report(m, example)[0] / full) ** 0.5,
        tp.importance.GroupMagnitudeImportance(p=2), True)
    assert len(aimed.tries) >= 2 and aimed.tries[0]["measured_fraction"] > 0.8
    assert abs(aimed.measured_fraction / 0.7 - 1) <= 0.05
    assert abs(fvcore_report(aimed.derivation, example)[0] / full - 0.49) <= 0.05
    assert fvcore_report(dense, example)[0] == full


def test_pareto_benchmark_quick_mode(tmp_path):
    """The whole comparison, tiny epochs, one seed, one target: every method, both budgets:
    uniform and random train for the total epochs in (a) and the fine-tune's in (b); the
    others train once, the same network reported under both."""
    subprocess.run([sys.executable, "-m", "benchmarks.pareto", "--quick", "--fractions", "0.25", "--out",
                    str(tmp_path)],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import json
    result = json.loads((tmp_path / "pareto-digits-quick.json").read_text())
    methods = {r["method"] for r in result["rows"]}
    assert methods == {"ours", "uniform", "l1", "torch_pruning", "random"}
    assert len(result["rows"]) == 10 and {r["fraction"] for r in result["rows"]} == {0.25}
    assert result["epochs"] == {"a": 3, "b": 1}  # QUICK: 2 search + 1 fine-tune epochs
    by = {(r["method"], r["fraction"], r["budget"]): r for r in result["rows"]}
    for (method, fraction, budget), r in by.items():
        other = by[method, fraction, "b" if budget == "a" else "a"]
        shared = method in ("ours", "l1", "torch_pruning")
        assert (r["test_acc"] == other["test_acc"] and r["seconds"] == other["seconds"]) == shared
    for r in result["rows"]:  # every method at the same budget, up to one width step
        assert abs(r["macs"] - r["target_macs"]) <= 0.1 * r["target_macs"], r
        assert 0.0 <= r["test_acc"] <= 1.0
    assert (tmp_path / "pareto-digits-quick.png").stat().st_size > 0
    table = (tmp_path / "pareto-digits-quick.md").read_text()
    assert table.count("| torch_pruning |") == 2 and "budget (b)" in table and "25% of dense MACs" in table
    assert "12% of dense MACs" not in table
