"""Grouped convolutions (ResNeXt, RegNet) pruned by whole groups: the convolution's input and
output channel groups become one, kept in whole cells, and the slimmed network equals the
hard-masked one with fewer convolution groups."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.support_matrix import check
from maskednas.ops.layer_rules import LAYER_RULES, rule_for
from maskednas.supernet.user_model import ModelSpaceConfig, UserModel


def resnext_net(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A ResNeXt bottleneck (1x1, grouped 3x3 with 8 groups of 4, 1x1) between stem and head."""
    class Bottleneck(nn.Module):
        def __init__(self, c, width=32, groups=8):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3, self.bn3 = nn.Conv2d(width, c, 1, bias=False), nn.BatchNorm2d(c)

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = torch.relu(self.bn2(self.conv2(y)))
            return torch.relu(x + self.bn3(self.conv3(y)))

    return nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                         nn.ReLU(), Bottleneck(16), Bottleneck(16), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, num_classes))


SOURCE = "test_grouped_conv:resnext_net"


def test_the_grouped_conv_rule_links_its_input_and_output_groups():
    net = UserModel(ModelSpaceConfig(source=SOURCE), 3, 10, 16)
    assert rule_for(net.model[3].conv2) is LAYER_RULES.get("grouped_conv")
    assert not net.groups.skipped
    groups = {net.groups.roots[g][0]: g for g in net.masks}
    inner = groups["3.conv1"]  # conv1's output, conv2's input and (linked) conv2's output
    assert "3.conv2" not in groups and net.channel_step(inner) == 4
    assert {"3.conv2", "3.bn2", "3.conv3"} <= net.groups.members[inner]


def test_whole_groups_are_kept_by_their_mean_logit():
    net = UserModel(ModelSpaceConfig(source=SOURCE), 3, 10, 16)
    inner = next(g for g in net.masks if net.groups.roots[g][0] == "3.conv1")
    logits = torch.zeros(32)
    logits[8:12], logits[28:32] = 2.0, 1.0  # groups 2 and 7 are the best
    assert net.keep_channels(inner, logits, 8).tolist() == [8, 9, 10, 11, 28, 29, 30, 31]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_resnext_block_slims_exactly_with_fewer_groups(seed, tmp_path):
    r = check(SOURCE, 16, seed=seed, export_to=tmp_path / "export")
    assert r["gap"] <= 1e-5 * r["scale"], r["gap"]
    assert (r["macs"], r["params"]) == (r["fvcore_macs"], r["fvcore_params"])
    convs = {n: m for n, m in r["model"].named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    assert convs and all(m.in_channels == m.out_channels == 4 * m.groups for m in convs.values())
    assert any(m.groups < 8 for m in convs.values())


def test_the_export_rebuilds_the_fewer_groups(tmp_path):
    from maskednas.export import load
    r = check(SOURCE, 16, seed=0, export_to=tmp_path / "export")
    model = load(tmp_path / "export", trust_source=["test_grouped_conv"])
    with torch.no_grad():
        assert torch.equal(model(r["input"]), r["model"](r["input"]))
    assert [m.groups for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1] == \
        [m.groups for m in r["model"].modules() if isinstance(m, nn.Conv2d) and m.groups > 1]


def two_grouped_net(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1, groups=2), nn.ReLU(),
                         nn.Conv2d(16, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, num_classes))


def test_a_grouped_conv_whose_group_is_left_whole_slims_unchanged():
    """The second grouped conv writes into an ignored layer: its channel group, which the first
    one's was merged into, stays whole, and so do both convolutions (the last 1x1 conv's group is
    what the network has to prune, so it builds)."""
    from maskednas.derive import derive, slim
    net = UserModel(ModelSpaceConfig(source="test_grouped_conv:two_grouped_net", ignore=["6"]), 3, 10, 16)
    assert net.groups.grouped_convs == []
    derivation = derive(net)
    model = slim(net, derivation).eval()
    assert [model[2].groups, model[4].groups] == [4, 2]
    assert [model[2].out_channels, model[4].out_channels] == [16, 16]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad(), net.hard_masked(derivation.ops, derivation.keep):
        assert torch.allclose(model(x), net(x), atol=1e-5)
