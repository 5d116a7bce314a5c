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
        x = torch.relu(self.c(torch.cat([self.b(x1), x2], 1)))
        return self.fc(x.mean((2, 3)))


def chunk_net(num_classes: int = 10) -> ChunkNet:
    return ChunkNet(num_classes)


def test_a_chunk_keeps_its_parts_equal_by_tying_channel_j_of_each_part():
    """chunk(2) of a pruned tensor halves what is left: `a`'s channel j and j + 4 go together,
    `b` reads channel j of the group at its position j, `c` at 6 + j (after `b`'s 6)."""
    net = UserModel(ModelSpaceConfig(source=f"{__name__}:chunk_net"), 3, 10, 8)
    assert net.groups.own["a"].tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    # the part concatenated maps back through the concatenation first: `b` stays a group of its own
    assert net.groups.sizes["b"] == 6 and "b" not in net.groups.own and not net.groups.linked.get("a")
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
    (key,) = [k for k in net.groups.sizes if net.groups.roots[k][0] != "b"]
    assert net.groups.sizes[key] == 4
    (s,) = net.groups.inputs["b"].slices
    assert (s.repeat, sorted(s.index.view(4, 2).tolist())) == (2, [[0, 4], [1, 5], [2, 6], [3, 7]])
    r = check(f"{__name__}:ghost_module", 8)
    assert r["gap"] <= 1e-5 * r["scale"] and exact_cost(r) and r["model"].primary.out_channels < 4


class TinyAttention(nn.Module):
    """Tokens through an attention: q @ k and attention @ v multiply two activations, whose
    channels Torch-Pruning maps as if elementwise. `timm`: timm's Attention (an attention rule
    prunes its heads); otherwise the same written by hand (no rule covers it)."""

    def __init__(self, num_classes: int = 10, timm: bool = False, width_from_input: bool = False) -> None:
        super().__init__()
        self.width_from_input = width_from_input  # heads sized from the input, as CaiT's are
        self.embed = nn.Conv2d(3, 8, 2, stride=2)
        self.fc = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, num_classes))
        if timm:
            from timm.layers import Attention
            self.attn = Attention(8, num_heads=2)
        else:
            self.qkv, self.proj = nn.Linear(8, 24), nn.Linear(8, 8)

    def attend(self, x):
        if hasattr(self, "attn"):
            return self.attn(x)
        head_dim = x.shape[-1] // 2 if self.width_from_input else 4
        q, k, v = self.qkv(x).view(x.shape[0], x.shape[1], 3, 2, head_dim).permute(2, 0, 3, 1, 4)
        y = (q @ k.transpose(-2, -1)).softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], 8))

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        return self.fc((x + self.attend(x)).mean(1))


def tiny_attention(num_classes: int = 10) -> TinyAttention:
    return TinyAttention(num_classes)


def tiny_timm_attention(num_classes: int = 10) -> TinyAttention:
    return TinyAttention(num_classes, timm=True)


def heads_from_width(num_classes: int = 10) -> TinyAttention:
    return TinyAttention(num_classes, width_from_input=True)


def test_channels_through_a_product_of_activations_are_left_whole_not_pruned_into_a_crash():
    """The heads' reshape has sizes in the code: q, k and v tied channel by channel were pruned
    into a reshape that fails. Without an attention rule the qkv group is left whole, naming the
    product, and the products are costed as they are; where that attention sizes its heads
    from the channels it reads, those are left whole too; with a rule, heads are pruned."""
    net = UserModel(ModelSpaceConfig(source=f"{__name__}:tiny_attention"), 3, 10, 8)
    assert "product of two activations (attention)" in net.groups.skipped["qkv"]
    assert not net.heads and sum(p.macs for p in net.trace.products) == 2 * 2 * 16 * 16 * 4
    r = check(f"{__name__}:tiny_attention", 8)
    assert r["gap"] <= 1e-5 * r["scale"] and exact_cost(r)
    net = UserModel(ModelSpaceConfig(source=f"{__name__}:heads_from_width"), 3, 10, 8)
    (why,) = [w for w in net.groups.skipped.values() if "no attention rule covers" in w]
    assert why.startswith("the network's forward multiplies") and len(net.masks) == 1  # the MLP's
    r = check(f"{__name__}:heads_from_width", 8)  # (it crashed in the pruned reshape)
    assert r["gap"] <= 1e-5 * r["scale"] and exact_cost(r)
    net = UserModel(ModelSpaceConfig(source=f"{__name__}:tiny_timm_attention"), 3, 10, 8)
    assert not net.groups.skipped and [h.attention for h in net.heads.values()] == ["attn"]
    r = check(f"{__name__}:tiny_timm_attention", 8)
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


class FixedPieceShuffle(nn.Module):
    """A shuffle written with its piece size fixed: view(n, c // 2, 2, h, w) keeps pieces of 2
    however many channels are left, so the sets tied as for a fixed number of pieces mix."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.a(x)
        n, c, h, w = x.shape
        x = x.view(n, c // 2, 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(self.b(x).mean((2, 3)))


def fixed_piece_shuffle(num_classes: int = 10) -> FixedPieceShuffle:
    return FixedPieceShuffle(num_classes)


def test_a_shuffle_whose_code_fixes_the_piece_size_is_refused_not_pruned_wrongly():
    """One trace cannot tell which size the code fixes: a copy slimmed by one tied set must
    match the hard-masked network when the space is built (it differed by 0.08 of the scale)."""
    with pytest.raises(ValueError, match=r"fixed_piece_shuffle: the channels of a are tied by a "
                                         r"chunk or a channel shuffle whose sizes the network's "
                                         r"code fixes otherwise .* list a in model.ignore"):
        UserModel(ModelSpaceConfig(source=f"{__name__}:fixed_piece_shuffle"), 3, 10, 8)
    net = UserModel(ModelSpaceConfig(source=f"{__name__}:fixed_piece_shuffle", ignore=["a"]), 3, 10, 8)
    assert "a" not in net.groups.sizes and "b" in net.groups.sizes


class UnequalChunk(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        x1, _, _ = self.a(x).chunk(3, dim=1)  # parts of 3, 3 and 2
        return self.fc(self.b(x1).mean((2, 3)))


def unequal_chunk(num_classes: int = 10) -> UnequalChunk:
    return UnequalChunk(num_classes)


def test_a_chunk_into_unequal_parts_is_left_whole_and_named():
    net = UserModel(ModelSpaceConfig(source=f"{__name__}:unequal_chunk"), 3, 10, 8)
    assert "a chunk into unequal parts ([3, 3, 2])" in net.groups.skipped["a"]


class HeightConcat(nn.Module):
    """Channels-last tokens concatenated along dim 1, their height: no concatenation of channels."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(3, 4, 1), nn.Linear(4, 8), nn.Linear(4, 8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.stem(x).permute(0, 2, 3, 1)  # N, H, W, C
        return self.fc(torch.cat([self.a(x), self.b(x)], 1).mean((1, 2)))


def height_concat(num_classes: int = 10) -> HeightConcat:
    return HeightConcat(num_classes)


def test_a_concatenation_of_channels_last_tensors_along_their_height_keeps_the_channels_whole():
    """Both pieces hold all 8 channels of one group (a residual-like tie), not 16 in a row.
    (Told apart by Torch-Pruning's channels of each piece, 8, against the concatenated size, 6:
    where the height equals the channels the graph's misread is refused.)"""
    net = UserModel(ModelSpaceConfig(source=f"{__name__}:height_concat"), 3, 10, 6)
    (s,) = net.groups.inputs["fc"].slices
    assert s.index.tolist() == list(range(8))
    r = check(f"{__name__}:height_concat", 6)
    assert r["gap"] <= 1e-5 * r["scale"] and exact_cost(r) and r["model"].a.out_features < 8
