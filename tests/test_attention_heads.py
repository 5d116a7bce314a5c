"""Attention heads in the `model` space: timm vision transformers pruned head by head."""
from __future__ import annotations

import pytest
import torch

from benchmarks.support_matrix import check, exact_cost
from maskednas.export.flops import fvcore_report
from maskednas.ops.attention_rules import fused_qkv_rows
from maskednas.ops.masks import WidthRounding
from maskednas.supernet.user_model import ModelSpaceConfig, UserModel

MICRO = "benchmarks.vit:vit_micro"  # fused attention, 4 heads of 12 channels, 2 blocks
UNFUSED = "benchmarks.vit:vit_micro_unfused"  # explicit q @ k and weights @ v, q/k norms, qkv bias


@pytest.mark.parametrize("source, seed", [(MICRO, 3), (UNFUSED, 1)])  # seeds that prune both
def test_heads_are_pruned_exactly_and_costed_as_fvcore_counts(source, seed, tmp_path):
    """Every attention is a head group (nothing left whole); at half the MACs some heads go,
    the slimmed network computes what the hard-masked one does, and its MACs (the attention's
    products included) are fvcore's count of it; the export loads at its head counts."""
    r = check(source, 32, seed=seed, export_to=tmp_path / "m")
    assert r["skipped_groups"] == 0 and r["left_unpruned"] == []
    assert r["gap"] <= 1e-5 * r["scale"], (r["gap"], r["scale"])
    assert exact_cost(r)
    heads = [m.num_heads for m in r["model"].modules() if hasattr(m, "num_heads")]
    assert min(heads) < 4, heads
    assert r["model"].arch.zeroed  # an MLP branch removed
    from maskednas import export
    loaded = export.load(tmp_path / "m", trust_source=["benchmarks"]).eval()
    assert [m.num_heads for m in loaded.modules() if hasattr(m, "num_heads")] == heads
    with torch.no_grad():
        assert torch.equal(loaded(r["input"]), r["model"](r["input"]))


def test_fused_attention_is_counted_as_its_two_products():
    """fvcore has no handle for scaled_dot_product_attention: ours counts it as the explicit
    q @ k^T and weights @ v that the unfused forward runs, and the cost model agrees."""
    from benchmarks.vit import vit_micro
    fused, unfused = vit_micro(), vit_micro()
    for m in unfused.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    x = torch.zeros(1, 3, 32, 32)
    products = 2 * 2 * 4 * 17 * 17 * 12  # blocks x (q @ k, weights @ v) x heads x tokens^2 x head dim
    assert fvcore_report(fused, x)[0] == fvcore_report(unfused, x)[0]
    net = UserModel(ModelSpaceConfig(source=MICRO), 3, 10, 32)
    assert sum(p.macs for p in net.trace.products) == products
    assert net.dense_architecture().macs == fvcore_report(fused, x)[0]


def test_head_gates_scale_the_attention_and_get_gradients():
    """A head whose gate is 0 adds nothing (the output equals the network without that head's
    columns in the output projection); the loss reaches every head's mask logits."""
    net = UserModel(ModelSpaceConfig(source=MICRO), 3, 10, 32).eval()
    key = next(k for k in net.heads)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    keep = {k: torch.arange(m.channels) for k, m in net.masks.items()}
    keep[key] = torch.tensor([0, 2, 3])
    ops = {b: "keep" for b in net.blocks}
    with torch.no_grad(), net.hard_masked(ops, keep):
        masked = net(x)
    proj = net.model.get_submodule(net.heads[key].reader)
    with torch.no_grad():
        proj.weight[:, 12:24] = 0  # head 1's columns
        bare = net.model(x)
    assert torch.allclose(masked, bare, atol=1e-6)
    net.train()
    net(x).logsumexp(1).sum().backward()
    for k in net.heads:
        assert net.masks[k].logits.grad is not None and net.masks[k].logits.grad.abs().sum() > 0


def test_qkv_rows_follow_each_head_and_rounding_counts_head_channels():
    """A fused qkv's rows of head h: its q, k and v rows; `round_to` counts channels, so heads of
    12 channels round to pairs under round_to 8 (24 channels) and to single heads under 4."""
    rows = fused_qkv_rows(3, 2)  # 3 heads of 2: q rows 0-5, k 6-11, v 12-17
    assert rows.tolist() == [[0, 1, 6, 7, 12, 13], [2, 3, 8, 9, 14, 15], [4, 5, 10, 11, 16, 17]]
    assert WidthRounding(8).divisor(1, unit=12) == 2 and WidthRounding(4).divisor(1, unit=12) == 1
    assert WidthRounding(8, min_channels=16)(1, 4, 1, unit=12) == 2  # at least 16 channels: 2 heads
    net = UserModel(ModelSpaceConfig(source=MICRO), 3, 10, 32)
    assert {net.channel_unit(k) for k in net.heads} == {12}
    assert all(net.smallest_widths(min_channels=8)[k] == 1 for k in net.heads)


def test_magnitude_init_ranks_heads_by_their_weights():
    """model.mask_init_from=magnitude starts each head's logit at mask_init + (its L2 norm over
    its qkv rows and projection columns, over the mean, minus 1)."""
    ranked = UserModel(ModelSpaceConfig(source=MICRO, mask_init_from="magnitude"), 3, 10, 32)
    key = next(k for k in ranked.heads)
    attn = ranked.model.get_submodule(ranked.heads[key].attention)
    rows = fused_qkv_rows(4, 12)
    norms = torch.stack([(attn.qkv.weight[rows[h]].pow(2).sum() + attn.proj.weight[:, 12 * h:12 * h + 12]
                          .pow(2).sum()).sqrt() for h in range(4)]).detach()
    expected = 3.0 + norms / norms.mean() - 1
    assert torch.allclose(ranked.masks[key].logits.detach(), expected, atol=1e-5)


def test_an_ignored_projection_leaves_its_heads_whole():
    net = UserModel(ModelSpaceConfig(source=MICRO, ignore=["blocks.0.attn.proj"]), 3, 10, 32)
    assert [h.attention for h in net.heads.values()] == ["blocks.1.attn"]
    assert "blocks.0.attn.proj is listed in model.ignore" in net.groups.skipped["blocks.0.attn"]


def test_each_branch_of_a_transformer_block_is_kept_or_skipped_on_its_own():
    """timm's Block adds its attention and its MLP to the stream: two depth choices, each
    with its norm and layer scale. A skipped branch adds nothing (the hard-masked network equals
    the network whose branch outputs zeros), and the loss reaches both keep/skip logits."""
    net = UserModel(ModelSpaceConfig(source=MICRO), 3, 10, 32).eval()
    assert net.blocks == ["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"]
    ops = {b: "skip" if b == "blocks.1.mlp" else "keep" for b in net.blocks}
    keep = {k: torch.arange(m.channels) for k, m in net.masks.items()}
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), net.hard_masked(ops, keep):
        masked = net(x)
    arch = net.architecture(ops, net.full_widths())
    assert arch.zeroed == ("blocks.1.mlp",) and arch.removed_choices() == ("blocks.1.mlp",)
    assert set(arch.removed) == {"blocks.1.norm2", "blocks.1.ls2", "blocks.1.drop_path2"}
    mlp = net.model.blocks[1].mlp
    handle = mlp.register_forward_hook(lambda m, args, out: torch.zeros_like(out))
    try:
        with torch.no_grad():
            assert torch.allclose(masked, net.model(x), atol=1e-6)
    finally:
        handle.remove()
    dense = net.cost(net.one_hot({b: "keep" for b in net.blocks}), net.full_widths()).macs
    norm2 = 17 * 48 * 5  # fvcore's LayerNorm count: 5 per element with an affine
    fc = 17 * (48 * 96 + 96 * 48)
    assert dense - arch.macs == norm2 + fc
    net.train()
    net(x).logsumexp(1).sum().backward()
    assert all(float(net.alphas[k].grad.abs().sum()) > 0 for k in net.alphas)


def test_the_embedding_width_is_searched_unless_turned_off():
    """The residual stream (patch embedding, norms, every projection's output, the classifier's
    input) is one group; model.embedding_width=false leaves it whole and keeps the others."""
    on = UserModel(ModelSpaceConfig(source=MICRO), 3, 10, 32)
    off = UserModel(ModelSpaceConfig(source=MICRO, embedding_width=False), 3, 10, 32)
    stream = {s.group for s in on.groups.outputs["blocks.0.attn.proj"].slices}
    assert len(stream) == 1 and on.masks[stream.pop()].channels == 48
    assert not off.groups.outputs["blocks.0.attn.proj"].slices  # every channel kept
    assert set(off.masks) == set(on.masks) - {s.group for s in on.groups.outputs["blocks.0.attn.proj"].slices}
    assert any("model.embedding_width=false" in why for why in off.groups.skipped.values())


def test_a_subclass_with_its_own_forward_is_not_taken_for_timm_attention():
    from timm.models.vision_transformer import Attention

    from maskednas import attention_rule_for

    class Scaled(Attention):  # its own forward: no rule may assume where its heads are
        def forward(self, x, attn_mask=None, is_causal=False):
            return 2 * super().forward(x)

    assert attention_rule_for(Attention(8, num_heads=2)) is not None
    assert attention_rule_for(Scaled(8, num_heads=2)) is None
