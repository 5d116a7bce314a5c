"""The DARTS cell space: genotype derivation, slimming, exact costs, the evaluation network,
the skip-collapse remedy and its statistics."""
import pytest
import torch

from conftest import randomize_norms

from maskednas.export import Architecture, build
from maskednas.derive import derive
from maskednas.export.architecture import evaluation_architecture
from maskednas.export.flops import fvcore_report
from maskednas.derive.slim import slim
from maskednas.supernet import DartsSpaceConfig, DartsSupernet, dense_cost, discrete_cost, expected_cost
from maskednas.ops import WidthRounding
from maskednas.supernet.darts import DARTS_PRIMITIVES

# Liu et al. (2019), genotypes.py of the reference code; 'none' is called 'zero' here
DARTS_V2 = {
    "normal": [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
               ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    "reduce": [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
               ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
}


def tiny_darts(**kw) -> DartsSupernet:
    """3 cells (normal, reduce, reduce) of 4 nodes on 8x8 inputs: milliseconds per forward."""
    cfg = DartsSpaceConfig(**{"channels": 6, "cells": 3, "stem_multiplier": 2, **kw})
    return DartsSupernet(cfg, in_channels=3, num_classes=5, input_size=8)


def set_genotype_alphas(net, genotype):
    """Alpha that favours `genotype`: its edges carry their op (the first of each node a little
    stronger), every other edge leans to 'zero', which derivation must ignore."""
    zero = net.names.index("zero")
    with torch.no_grad():
        for kind, pairs in genotype.items():
            alpha = net.alphas[kind]
            alpha.zero_()
            alpha[:, zero] = 20.0
            for i, (op, source) in enumerate(pairs):
                e = net.edge_index(i // 2, source)
                alpha[e] = 0.0
                alpha[e, net.names.index(op)] = 10.0 - i % 2


def randomize_darts(net, seed=0, size=8):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mask in net.masks.values():
            mask.logits.copy_(torch.randn(mask.logits.shape, generator=g) * 2)
    randomize_norms(net, g)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, net.in_channels, size, size, generator=g))
    net.eval()


def test_hand_set_alpha_derives_darts_v2_exactly():
    net = tiny_darts()
    set_genotype_alphas(net, DARTS_V2)
    assert net.derive_ops() == DARTS_V2
    d = derive(net)
    genotype = d.arch.genotype()
    assert genotype["normal"] == DARTS_V2["normal"] and genotype["reduce"] == DARTS_V2["reduce"]
    assert genotype["normal_concat"] == genotype["reduce_concat"] == [2, 3, 4, 5]
    assert net.arch_stats() == {"skips/normal": 2.0, "skips/reduce": 3.0}


def reference_genotype(net, kind: str) -> list:
    """DARTS' rule written out in float64: per node, the two edges whose best non-zero op has the
    highest softmax(alpha) probability, strongest first, each with that op."""
    p = torch.softmax(net.alphas[kind].detach().double(), -1)
    p[:, net.names.index("zero")] = -1.0
    strength, best = p.max(-1)
    sources, out, start = net.cells[0].sources, [], 0
    for node in range(net.space.nodes):
        edges = range(start, start + node + 2)
        for e in sorted(edges, key=lambda e: -float(strength[e]))[:2]:
            out.append((net.names[int(best[e])], sources[e]))
        start += node + 2
    return out


@pytest.mark.parametrize("seed", range(5))
def test_derivation_does_not_depend_on_the_temperature(seed):
    """At T = 0.01 a float32 softmax of N(0,1) alpha saturates (most edges' strongest op at 1.0
    exactly); ranking those ties by edge index changed the genotype. Derivation, and the one-hot
    network the penalty prices, must be DARTS' rule at any temperature."""
    net = tiny_darts()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in net.alphas.values():
            a.copy_(torch.randn(a.shape, generator=g))
    derived = {}
    for t in (1.0, 0.01):
        net.set_temperature(t)
        derived[t] = (net.derive_ops(), net.select(net.op_logits()), derive(net).arch.genotype())
    assert derived[1.0][0] == derived[0.01][0]
    assert all(torch.equal(derived[1.0][1][k], derived[0.01][1][k]) for k in ("normal", "reduce"))
    for kind in ("normal", "reduce"):
        assert derived[0.01][0][kind] == reference_genotype(net, kind) == derived[0.01][2][kind]


@pytest.mark.parametrize("temperature", [1.0, 0.01])
def test_darts_v2_is_derived_exactly_at_any_temperature(temperature):
    net = tiny_darts()
    set_genotype_alphas(net, DARTS_V2)
    net.set_temperature(temperature)
    assert net.derive_ops() == DARTS_V2
    hot = net.select(net.op_logits())
    for kind, pairs in DARTS_V2.items():
        expected = torch.zeros_like(hot[kind])
        for i, (op, source) in enumerate(pairs):
            expected[net.edge_index(i // 2, source), net.names.index(op)] = 1.0
        assert torch.equal(hot[kind], expected)


def test_derivation_ranks_edges_by_their_strongest_non_zero_op():
    net = tiny_darts()
    with torch.no_grad():
        a = net.alphas["normal"]
        a.zero_()
        a[0, net.names.index("zero")] = 50.0  # node 0, edge from s0: zero dominates ...
        a[0, net.names.index("avg_pool_3x3")] = 1.0  # ... its best real op is avg pool
        a[2, net.names.index("sep_conv_5x5")] = 3.0  # node 1: s0 -> sep 5x5 strongest
        a[4, net.names.index("dil_conv_5x5")] = 2.0  # node 1: n0 -> dil 5x5 second
    genotype = net.derive_ops()
    assert genotype["normal"][0] == ("max_pool_3x3", 1)  # s1 ties at uniform, s0 is drained by zero
    assert genotype["normal"][1] == ("avg_pool_3x3", 0)
    assert genotype["normal"][2:4] == [("sep_conv_5x5", 0), ("dil_conv_5x5", 2)]


@pytest.mark.parametrize("op", [n for n in DARTS_PRIMITIVES if n != "zero"])
def test_slimmed_cells_equal_the_hard_masked_supernet(op):
    """Every op on every edge kind (stride-2 skip is FactorizedReduce), pruned cell widths and
    pruned stem; outputs agree, and parameters and fvcore FLOPs equal the analytic cost."""
    torch.manual_seed(0)
    net = tiny_darts()
    randomize_darts(net)
    genotype = {kind: [(op, s) for s in (0, 1, 2, 1, 3, 0, 4, 2)] for kind in ("normal", "reduce")}
    set_genotype_alphas(net, genotype)
    d = derive(net)
    assert all(len(d.keep[c.group]) < c.channels for c in net.cells)  # widths really are pruned
    model = slim(net, d).eval()
    net.hard_mask(d.ops, d.keep)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        expected, got = net(x), model(x)
        fixed = expected_cost(net)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), float((got - expected).abs().max())
    cost = d.arch.cost()
    flops, params, _ = fvcore_report(model, x[:1])
    assert sum(p.numel() for p in model.parameters()) == cost.params == params
    assert cost.macs == flops == float(fixed.macs)
    assert float(fixed.params) == cost.params


def test_discrete_cost_is_the_cost_of_the_derived_cells():
    torch.manual_seed(1)
    net = tiny_darts()
    randomize_darts(net, seed=1)
    with torch.no_grad():
        net.alphas["normal"].normal_()
        net.alphas["reduce"].normal_()
        for c in net.cells:  # even counts with one channel per half: what derivation keeps
            half = c.channels // 2
            net.masks[c.group].logits.copy_(torch.tensor([1.0, -1.0, -1.0]).repeat(c.channels // 3))
            assert int((net.masks[c.group].logits[:half] > 0).sum()) == int(
                (net.masks[c.group].logits[half:] > 0).sum())
    d = derive(net)
    assert float(discrete_cost(net).macs.detach()) == d.arch.cost().macs
    cost = discrete_cost(net)
    grads = torch.autograd.grad(cost.macs, net.arch_parameters(), allow_unused=True)
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("round_to,min_channels", [(1, 1), (1, 2), (4, 4)])
def test_penalty_prices_the_paired_widths_the_discretizer_keeps(round_to, min_channels):
    """Odd and unbalanced kept counts per half: derivation keeps an even width (one channel per
    half of FactorizedReduce's pairs), and the penalty's discrete cost prices exactly that."""
    torch.manual_seed(4)
    net = tiny_darts(channels=8)
    randomize_darts(net, seed=4)
    with torch.no_grad():
        net.alphas["normal"].normal_()
        net.alphas["reduce"].normal_()
        for k, c in enumerate(net.cells):  # 3, 4, 5 ... channels above zero, unevenly per half
            kept = 3 + k
            net.masks[c.group].logits.copy_(torch.tensor([1.0] * kept + [-1.0] * (c.channels - kept)))
    rounding = WidthRounding(round_to, min_channels)
    d = derive(net, round_to=round_to, min_channels=min_channels)
    assert any(int(net.masks[c.group].kept().sum()) % 2 for c in net.cells)  # odd counts occur
    assert float(discrete_cost(net, rounding).macs.detach()) == d.arch.cost().macs
    assert float(discrete_cost(net, rounding).params.detach()) == d.arch.cost().params


def test_cell_widths_are_kept_in_pairs_across_the_halves():
    torch.manual_seed(2)
    net = tiny_darts(channels=8)
    randomize_darts(net, seed=2)
    sep = [("sep_conv_3x3", s) for s in (0, 1, 2, 1, 3, 0, 4, 2)]
    set_genotype_alphas(net, {"normal": sep, "reduce": sep})
    d = derive(net, 0.5 * float(dense_cost(net).macs))
    for c in net.cells:
        keep = d.keep[c.group]
        assert len(keep) % 2 == 0
        assert int((keep < c.channels // 2).sum()) == len(keep) // 2
    assert abs(d.arch.cost().macs / (0.5 * float(dense_cost(net).macs)) - 1) <= 0.03


def test_dense_reference_is_the_most_expensive_derivable_cell_network():
    net = tiny_darts()
    dense = net.dense_architecture()
    assert dense.cost().macs == dense_cost(net).macs
    assert {op for op, _ in dense.genotype()["normal"]} == {"sep_conv_5x5"}
    assert [c.channels for c in dense.cells] == [cell.channels for cell in net.cells]
    assert dense.stem_channels == net.masks["stem"].channels


def test_architecture_with_cells_round_trips_through_json():
    net = tiny_darts()
    set_genotype_alphas(net, DARTS_V2)
    arch = derive(net).arch
    again = Architecture.from_json(arch.to_json())
    assert again == arch and again.cost() == arch.cost()


@pytest.mark.parametrize("change, message", [
    (lambda c: {"channels": 5}, "even"),
    (lambda c: {"edges": c.edges[:3]}, "two edges per node"),
    (lambda c: {"c_in0": c.c_in0 + 2}, "previous cells give"),
])
def test_invalid_cell_records_are_rejected(change, message):
    from dataclasses import replace

    net = tiny_darts()
    set_genotype_alphas(net, DARTS_V2)
    arch = derive(net).arch
    cells = list(arch.cells)
    cells[0] = replace(cells[0], **change(cells[0]))
    with pytest.raises(ValueError, match=message):
        replace(arch, cells=tuple(cells))


def test_evaluation_network_of_darts_v2_matches_the_paper():
    """20 cells of 36 channels: DARTS reports 3.3M parameters for DARTS_V2 on CIFAR-10."""
    net = tiny_darts()
    set_genotype_alphas(net, DARTS_V2)
    searched = derive(net).arch
    arch = evaluation_architecture(searched, cells=20, channels=36)
    assert len(arch.cells) == 20 and [k for k, c in enumerate(arch.cells) if c.reduction] == [6, 13]
    assert arch.genotype()["normal"] == DARTS_V2["normal"]
    cost = arch.cost()
    model = build(arch)
    assert sum(p.numel() for p in model.parameters()) == cost.params
    assert 3.2e6 < cost.params < 3.4e6, cost.params
    with torch.no_grad():
        assert model(torch.randn(2, 3, 8, 8)).shape == (2, 5)


def test_auxiliary_skip_decays_to_zero_and_is_off_in_the_fixed_network():
    torch.manual_seed(3)
    net = tiny_darts(aux_skip=1.0)
    randomize_darts(net)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        with_aux = net(x)
        net.set_progress(0.5)
        assert net.aux_skip == 0.5
        net.set_progress(1.0)
        assert net.aux_skip == 0.0
        without = net(x)
        plain = tiny_darts()
        plain.load_state_dict(net.state_dict())
        plain.eval()
        assert torch.equal(without, plain(x))
        assert not torch.allclose(with_aux, without)
        net.set_progress(0.0)
        d = derive(net)
        net.hard_mask(d.ops, d.keep)
        assert torch.allclose(slim(net, d).eval()(x), net(x), atol=1e-5)


def test_invalid_darts_space_is_rejected():
    with pytest.raises(ValueError, match="even"):
        tiny_darts(channels=5)
    with pytest.raises(KeyError, match="sep_conv_3x3"):
        tiny_darts(candidates=["zero", "sep_conv_7x7"])
    with pytest.raises(ValueError, match="halve evenly"):
        DartsSupernet(DartsSpaceConfig(channels=4, cells=3), 3, 5, input_size=6)
