"""Layer rules of the user-network pruner: GroupNorm (a rule added as one file) prunes exactly,
keeping its groups equal, and a user's own layer comes in through `register_layer_rule`."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.support_matrix import check, randomize
from maskednas.derive import derive, slim
from maskednas.export.flops import fvcore_report
from maskednas.ops.layer_rules import LAYER_RULES, rule_for
from maskednas.supernet.user_model import ModelSpaceConfig, UserModel


def groupnorm_net(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """conv-GN-ReLU twice with a residual block, as a user might write it."""
    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.norm = nn.GroupNorm(4, c)

        def forward(self, x):
            return x + torch.relu(self.norm(self.conv(x)))

    return nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.GroupNorm(4, 16),
                         nn.ReLU(), nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.GroupNorm(8, 24),
                         nn.ReLU(), Block(24), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(24, num_classes))


SOURCE = "test_layer_rules:groupnorm_net"


def test_groupnorm_is_a_registered_rule_and_its_groups_are_partitions():
    net = UserModel(ModelSpaceConfig(source=SOURCE), 3, 10, 16)
    assert rule_for(nn.GroupNorm(4, 16)) is LAYER_RULES.get("groupnorm")
    assert not net.groups.skipped  # nothing left whole
    steps = sorted(net.channel_step(g) for g in net.masks)
    assert steps == [4, 8]  # the 16-channel group in 4 GroupNorm groups, the residual stream in 8


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_groupnorm_network_slims_exactly_with_equal_groups(seed, tmp_path):
    """With depth search (a block may go) and the support matrix's checks: slimmed == masked,
    analytic MACs and params == fvcore's, and every GroupNorm keeps its groups."""
    r = check(SOURCE, 16, seed=seed, export_to=tmp_path / "export")
    assert r["gap"] <= 1e-5 * r["scale"], r["gap"]
    assert (r["macs"], r["params"]) == (r["fvcore_macs"], r["fvcore_params"])
    assert r["macs"] < r["dense_macs"]
    norms = {n: m for n, m in r["model"].named_modules() if isinstance(m, nn.GroupNorm)}
    groups = {"1": 4, "4": 8, "6.norm": 4}  # "6" may be removed (the residual block skipped)
    assert {n: m.num_groups for n, m in norms.items()} == {n: g for n, g in groups.items() if n in norms}
    assert all(m.num_channels % m.num_groups == 0 for m in norms.values())


@pytest.mark.parametrize("seed", [0, 1])
def test_groupnorm_channels_are_pruned_exactly_without_depth_search(seed):
    """Channels alone make the cut: every GroupNorm narrower, the slimmed network equal to the
    hard-masked one."""
    net = UserModel(ModelSpaceConfig(source=SOURCE, depth=False), 3, 10, 16)
    randomize(net, torch.Generator().manual_seed(seed))
    net.eval()
    derivation = derive(net, 0.4 * net.dense_architecture().cost().macs)  # both groups must shrink
    model = slim(net, derivation).eval()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad(), net.hard_masked(derivation.ops, derivation.keep):
        reference = net(x)
        gap = float((model(x) - reference).abs().max())
    assert gap <= 1e-5 * float(reference.abs().max())
    norms = dict(model.named_modules())
    assert norms["1"].num_channels < 16 and norms["4"].num_channels < 24
    assert [norms[n].num_groups for n in ("1", "4", "6.norm")] == [4, 8, 4]
    macs, params, _ = fvcore_report(model, torch.zeros(1, 3, 16, 16))
    assert (derivation.arch.macs, derivation.arch.params) == (macs, params)


def test_keep_channels_takes_the_best_of_every_partition():
    net = UserModel(ModelSpaceConfig(source=SOURCE), 3, 10, 16)
    group = next(g for g in net.masks if net.channel_step(g) == 4)
    logits = torch.arange(16.0)  # the best channels all lie in the last GroupNorm group
    kept = net.keep_channels(group, logits, 8)
    assert kept.tolist() == [2, 3, 6, 7, 10, 11, 14, 15]  # two from each of the four groups


def test_a_layer_without_a_rule_is_left_unpruned_with_the_way_to_add_one():
    class Scale(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(1, c, 1, 1))

        def forward(self, x):
            return x * self.weight

    model = nn.Sequential(nn.Conv2d(3, 8, 3), Scale(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    from maskednas.supernet.channel_groups import _why_unsupported
    assert "register_layer_rule" in _why_unsupported(model[1])
    assert _why_unsupported(model[0]) is None


class ChannelScale(nn.Module):
    """A user's own layer: one weight per channel (Torch-Pruning slims it as a loose parameter)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x):
        return x * self.weight


def scaled_net(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), ChannelScale(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


@pytest.fixture
def channel_scale_rule():
    from maskednas import LayerRule, register_layer_rule
    from maskednas.ops import Cost
    rule = register_layer_rule("channel_scale", LayerRule(
        ChannelScale, channels=lambda m, side: m.weight.shape[1], same_channels=True,
        cost=lambda m, c_in, c_out, shape_in, shape_out: Cost(0, c_out)))
    yield rule
    del LAYER_RULES._obj_map["channel_scale"]


def test_a_users_registered_layer_is_counted_once_and_prunes_exactly(channel_scale_rule, tmp_path):
    net = UserModel(ModelSpaceConfig(source="test_layer_rules:scaled_net"), 3, 10, 16)
    assert rule_for(net.model[1]) is channel_scale_rule and not net.groups.skipped
    r = check("test_layer_rules:scaled_net", 16, export_to=tmp_path / "export")
    assert r["gap"] <= 1e-5 * r["scale"]
    assert (r["macs"], r["params"]) == (r["fvcore_macs"], r["fvcore_params"])
    assert r["model"][1].weight.shape[1] < 16  # its channels went with the group


def ln_gn_net(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    class ChannelsLastNorm(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.norm = nn.LayerNorm(c)

        def forward(self, x):
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    return nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), ChannelsLastNorm(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


def test_the_penalty_differentiates_through_norm_layer_costs():
    """MACs of LayerNorm and GroupNorm layers at tensor widths: a gradient for every mask."""
    from maskednas.supernet.cost_model import discrete_point
    net = UserModel(ModelSpaceConfig(source="test_layer_rules:ln_gn_net"), 3, 10, 16)
    macs = net.cost(*discrete_point(net)).macs
    grads = torch.autograd.grad(macs, [m.logits for m in net.masks.values()])
    assert len(grads) == 2 and all(g.abs().sum() > 0 for g in grads)
