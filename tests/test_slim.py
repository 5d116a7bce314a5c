"""Physical slimming: the compact model equals the hard-masked supernet, for every op."""
import pytest
import torch

from conftest import randomize, tiny_space
from maskednas.derive import derive
from maskednas.derive.slim import slim
from maskednas.ops import OPS, is_zero
from maskednas.supernet import MacroSupernet, StageSpec


def space_for(op: str):
    """Stage 1 starts at stride 1 (untied: stem -> stage width), stage 2 at stride 2; the second
    layer of each stage is residual (tied to the stage's pruned stream)."""
    if is_zero(op):
        return tiny_space(candidates=["zero", "conv_3x3"], first_candidates=["conv_3x3"])
    return tiny_space(candidates=[op, "zero"], first_candidates=[op],
                      stages=[StageSpec(6, 2, 1), StageSpec(10, 2, 2)])


def force(net, op):
    with torch.no_grad():
        for layer in net.layers:
            if op in layer.names:
                net.alphas[layer.name][layer.names.index(op)] = 50.0


@pytest.mark.parametrize("op", OPS.names())
def test_slimmed_model_equals_hard_masked_supernet(op):
    torch.manual_seed(0)
    net = MacroSupernet(space_for(op), in_channels=3, num_classes=7, input_size=9)
    randomize(net, size=9)
    force(net, op)
    d = derive(net)
    pruned = {g: len(k) for g, k in d.keep.items() if len(k) < net.masks[g].channels}
    assert {"s1", "s2"} <= pruned.keys()  # residual streams really are pruned
    model = slim(net, d).eval()
    net.hard_mask(d.ops, d.keep)
    x = torch.randn(4, 3, 9, 9)
    with torch.no_grad():
        expected, got = net(x), model(x)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), float((got - expected).abs().max())
    assert sum(p.numel() for p in model.parameters()) == d.arch.cost().params
    assert all(layer.op == op for layer in d.arch.layers if not layer.residual) or is_zero(op)


def test_slimmed_tensors_are_physically_smaller(tiny_net):
    d = derive(tiny_net)
    model = slim(tiny_net, d)
    stem_conv = model.stem[0]
    assert stem_conv.weight.shape[0] == len(d.keep["stem"]) < tiny_net.stem[0].weight.shape[0]
    assert model.head.fc.weight.shape[1] == len(d.keep[tiny_net.final_group])
    dense = sum(p.numel() for p in tiny_net.weight_parameters())
    assert sum(p.numel() for p in model.parameters()) < dense / 4


def test_slim_of_a_mismatched_architecture_fails_clearly(tiny_net):
    d = derive(tiny_net)
    other = derive(tiny_net)
    layer = next(l for l in tiny_net.layers if not l.residual)
    other_op = next(n for n in layer.names if n != other.ops[layer.name])
    other.ops[layer.name] = other_op  # the record says one op, the supernet copy another
    from dataclasses import replace
    i = [l.name for l in tiny_net.layers].index(layer.name)
    layers = list(d.arch.layers)
    layers[i] = replace(layers[i], op=other_op, hidden=None, kernel=3)
    with pytest.raises((ValueError, KeyError)):
        slim(tiny_net, type(d)(replace(d.arch, layers=tuple(layers)), d.ops, d.keep))
