"""Channels that pruning must keep alike: a chunk's parts, a channel shuffle's pieces, the
pieces of a concatenation a depthwise conv links (GhostNet); and what must stay whole: channels
through a product of two activations (attention)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.support_matrix import check, exact_cost
from maskednas.supernet.user_model import ModelSpaceConfig, UserModel


class ShuffleNet(nn.Module):
    """A channel shuffle (ShuffleNet's): a reshape that splits the channel dimension."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.a(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(self.b(x).mean((2, 3)))


def shuffle_net(num_classes: int = 10) -> ShuffleNet:
    return ShuffleNet(num_classes)


def test_a_channel_shuffle_ties_the_channels_it_interleaves_and_prunes_exactly():
    """view(n, 2, c/2), transpose, view: channel j of each half must be kept alike (the slimmed
    shuffle interleaves whatever is left), so `a`'s 8 channels are 4 tied pairs, and `b` reads
    pair j at the shuffled positions 2j and 2j + 1."""
    net = UserModel(ModelSpaceConfig(source=f"{__name__}:shuffle_net"), 3, 10, 8)
    assert net.groups.sizes == {"a": 4, "b": 8} and net.groups.own["a"].tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    (s,) = net.groups.inputs["b"].slices
    assert (s.index.tolist(), s.repeat) == (list(range(8)), 2)
    r = check(f"{__name__}:shuffle_net", 8)
    assert r["gap"] <= 1e-5 * r["scale"] and exact_cost(r) and r["macs"] < r["dense_macs"]


class ChunkNet(nn.Module):
    """`x.chunk(2)`: one part through a layer, the other straight to a concatenation."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(4, 6, 1), nn.Conv2d(10, 8, 1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x1, x2 = torch.relu(self.a(x)).chunk(2, dim=1)
        x = torch.relu(self.c(torch.cat([self.b(x1), x2 * 2], 1)))
        return self.fc(x.mean((2, 3)))


def chunk_net(num_classes: int = 10) -> ChunkNet:
    return ChunkNet(num_classes)


def test_a_chunk_keeps_its_parts_equal_by_tying_channel_j_of_each_part():
    """chunk(2) of a pruned tensor halves what is left: `a`'s channel j and j + 4 go together,
    `b` reads channel j of the group at its position j, `c` at 6 + j (after `b`'s 6)."""
    net = UserModel(ModelSpaceConfig(source=f"{__name__}:chunk_net"), 3, 10, 8)
    assert net.groups.own["a"].tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert [(s.group, s.index.tolist()) for s in net.groups.inputs["b"].slices] == [("a", [0, 1, 2, 3])]
    assert [(s.group, s.index.tolist()) for s in net.groups.inputs["c"].slices] == [
        ("b", list(range(6))), ("a", [6, 7, 8, 9])]
    r = check(f"{__name__}:chunk_net", 8)
    assert r["gap"] <= 1e-5 * r["scale"] and exact_cost(r)
    assert r["model"].a.out_channels % 2 == 0 and r["model"].a.out_channels < 8


class HalvesSummed(nn.Module):
    """Channels viewed as (2, C/2) and summed over the halves: no shuffle, no tie makes it prunable."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(4, 8, 1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.a(x)
        n, c, h, w = x.shape
        return self.fc(self.b(x.view(n, 2, c // 2, h, w).sum(1)).mean((2, 3)))


def halves_summed(num_classes: int = 10) -> HalvesSummed:
    return HalvesSummed(num_classes)


def test_channels_reshaped_over_several_dimensions_are_refused_naming_the_layer():
    """Any channel reshape but a shuffle would prune into a network that crashes or computes
    wrongly."""
    with pytest.raises(ValueError, match=r"halves_summed: the network reshapes \[1, 8, 8, 8\] to "
                                         r"\[1, 2, 4, 8, 8\], splitting its channels"):
        UserModel(ModelSpaceConfig(source=f"{__name__}:halves_summed"), 3, 10, 8)


class GhostModule(nn.Module):
    """GhostNet: a primary conv, a depthwise 'cheap' conv on its output, both concatenated,
    then a depthwise conv over the whole: channel j and j + 4 of the concatenation are one."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.primary, self.cheap = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.dw, self.b = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x1 = torch.relu(self.primary(x))
        x = torch.relu(self.dw(torch.cat([x1, self.cheap(x1)], 1)))
        return self.fc(self.b(x).mean((2, 3)))


def ghost_module(num_classes: int = 10) -> GhostModule:
    return GhostModule(num_classes)


def test_a_depthwise_conv_on_one_piece_ties_the_pieces_of_its_concatenation():
    """It was left whole ('cheap reads 4 of the 8 channels'): now 4 channels, each the pair."""
    net = UserModel(ModelSpaceConfig(source=f"{__name__}:ghost_module"), 3, 10, 8)
    assert not net.groups.skipped
    (key,) = [k for k, s in net.groups.sizes.items() if "b" not in k]
    assert net.groups.sizes[key] == 4
    (s,) = net.groups.inputs["b"].slices
    assert (s.repeat, sorted(s.index.view(4, 2).tolist())) == (2, [[0, 4], [1, 5], [2, 6], [3, 7]])
    r = check(f"{__name__}:ghost_module", 8)
    assert r["gap"] <= 1e-5 * r["scale"] and exact_cost(r) and r["model"].primary.out_channels < 4


class TinyAttention(nn.Module):
    """Tokens through timm's attention: q @ k and attention @ v multiply two activations, whose
    channels Torch-Pruning maps as if elementwise."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        from timm.layers import Attention
        self.embed, self.fc = nn.Conv2d(3, 8, 2, stride=2), nn.Linear(8, num_classes)
        self.attn = Attention(8, num_heads=2)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        return self.fc((x + self.attn(x)).mean(1))


def tiny_attention(num_classes: int = 10) -> TinyAttention:
    return TinyAttention(num_classes)


def test_channels_through_a_product_of_activations_are_left_whole_not_pruned_into_a_crash():
    """The heads' reshape has sizes in the code: q, k and v tied channel by channel were pruned
    into a reshape that fails. The qkv group is left whole, naming the product."""
    net = UserModel(ModelSpaceConfig(source=f"{__name__}:tiny_attention"), 3, 10, 8)
    assert "product of two activations (attention)" in net.groups.skipped["attn.qkv"]
    r = check(f"{__name__}:tiny_attention", 8)
    assert r["gap"] <= 1e-5 * r["scale"] and exact_cost(r)


def test_a_product_of_activations_is_told_from_a_layer_s_product_with_its_weight():
    from maskednas.supernet.graph_mapping import multiplies_activations

    def multiplies(y):  # any node of its graph (a batched product is a Bmm under a view)
        nodes, seen = [y.grad_fn], set()
        while nodes:
            node = nodes.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if multiplies_activations(node):
                return True
            nodes += [n for n, _ in node.next_functions]
        return False

    x, w = torch.randn(2, 3, 4, requires_grad=True) * 1, nn.Parameter(torch.randn(4, 5))
    q, k = x * 2, x * 3
    assert multiplies(q @ k.transpose(1, 2)) and multiplies(q[0] @ k[0].T)
    assert multiplies(F.scaled_dot_product_attention(q, k, x))
    assert not multiplies(x @ w) and not multiplies(x[0] @ w) and not multiplies(F.linear(x, w.T))
