"""The discretizer meets MACs targets and never empties a layer."""
import warnings

import pytest
import torch

from conftest import randomize, tiny_space
from maskednas.export import Architecture
from maskednas.derive import derive
from maskednas.derive.discretize import hold_target
from maskednas.ops import WidthRounding
from maskednas.supernet import MacroSupernet, StageSpec


@pytest.fixture
def net():
    torch.manual_seed(1)
    space = tiny_space(candidates=["conv_3x3", "mbconv_k3_e6", "zero"], stem=16,
                       stages=[StageSpec(16, 2, 1), StageSpec(32, 2, 2), StageSpec(48, 2, 2)])
    net = MacroSupernet(space, 3, 10, 16)
    randomize(net, size=16)
    with torch.no_grad():  # expensive ops everywhere, so every target below is reachable
        for layer in net.layers:
            net.alphas[layer.name][layer.names.index("conv_3x3")] = 10.0
    return net


def full_width_macs(net) -> float:
    """MACs of the chosen ops with every channel kept: the most any target can get."""
    return net.architecture(net.derive_ops(), net.full_widths()).cost().macs


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.75, 0.95])
def test_meets_macs_target_within_three_percent(net, fraction):
    target = fraction * full_width_macs(net)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a miss would warn
        d = derive(net, target)
    assert abs(d.arch.cost().macs - target) <= 0.03 * target


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
def test_hold_target_shifts_every_mask_onto_the_target(net, fraction):
    """The search's hold: one common offset moves the keep threshold (logit >= 0) so that the
    masks alone meet the target; the derivation then keeps exactly those channels, ranked as
    it would have ranked them, and a second hold is a no-op."""
    target = fraction * full_width_macs(net)
    rounding = WidthRounding(min_channels=2)
    with torch.no_grad():  # every logit above the keep threshold: full width, off the target
        for mask in net.masks.values():
            mask.logits.add_(10.0 - mask.logits.min())
    before = {g: m.logits.detach().clone() for g, m in net.masks.items()}
    expected = derive(net, target, min_channels=2)  # by its global ranking
    offset, held_macs = hold_target(net, target, 0.03, rounding)
    assert offset != 0.0
    for g, m in net.masks.items():
        assert torch.equal(m.logits.detach(), before[g] - offset)
        assert not bool((m.logits == 0).any())  # the threshold lies between two logits
    kept_by_masks = {g: int((net.masks[g].logits >= 0).sum()) for g in expected.keep}
    held = derive(net, target, min_channels=2)
    assert held.arch.cost().macs == expected.arch.cost().macs == held_macs
    assert abs(held.arch.cost().macs - target) <= 0.03 * target
    assert {g: k.tolist() for g, k in held.keep.items()} == {g: k.tolist() for g, k in expected.keep.items()}
    assert all(len(held.keep[g]) == rounding(n, net.masks[g].channels) for g, n in kept_by_masks.items())
    assert hold_target(net, target, 0.03, rounding) == (0.0, held_macs)


def test_ranks_channels_by_mask_value(net):
    d = derive(net, 0.3 * full_width_macs(net))
    for group, kept in d.keep.items():
        logits = net.masks[group].logits.detach()
        dropped = torch.ones_like(logits, dtype=torch.bool)
        dropped[kept] = False
        if dropped.any():
            assert logits[kept].min() >= logits[dropped].max()


def test_never_leaves_a_layer_empty(net):
    with torch.no_grad():
        for mask in net.masks.values():
            mask.logits.fill_(-5.0)  # every gate off
    d = derive(net, min_channels=2)
    assert all(len(k) == 2 for k in d.keep.values())
    for layer in d.arch.layers:
        assert layer.c_in >= 2 and layer.c_out >= 2 and (layer.hidden is None or layer.hidden >= 2)


def test_rounds_channel_counts_to_a_multiple(net):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # steps of 8 channels may not land within 3%
        d = derive(net, 0.4 * full_width_macs(net), round_to=8, min_channels=8)
    for group, kept in d.keep.items():
        assert len(kept) % 8 == 0 or len(kept) == net.masks[group].channels


def test_unreachable_target_for_the_chosen_ops_warns_with_the_closest(net):
    with pytest.warns(UserWarning, match="cannot meet the MACs target"):
        d = derive(net, 1.5 * full_width_macs(net), promote_ops=False)
    assert all(len(k) == net.masks[g].channels for g, k in d.keep.items())
    dense = net.dense_architecture().cost().macs
    with pytest.warns(UserWarning, match="cannot meet the MACs target"):  # not even the densest
        d = derive(net, 1.5 * dense)
    assert d.ops == net.derive_ops()


def test_architecture_round_trips_through_json(net):
    arch = derive(net, 0.3 * full_width_macs(net), mean=(0.5,) * 3, std=(0.25,) * 3).arch
    again = Architecture.from_json(arch.to_json())
    assert again == arch and again.cost() == arch.cost()


@pytest.mark.parametrize("change,message", [
    ({"version": 99}, "version 99"),
    ({"stem_channels": 5}, "c_in"),
    ({"colour": "red"}, "unknown architecture fields"),
])
def test_invalid_architecture_records_are_rejected(net, change, message):
    data = derive(net).arch.to_dict()
    data.update(change)
    with pytest.raises(ValueError, match=message):
        Architecture.from_dict(data)


def test_unknown_op_in_a_record_lists_the_registered_ops(net):
    data = derive(net).arch.to_dict()
    data["layers"][0]["op"] = "conv_9x9"
    with pytest.raises(KeyError, match="registered: .*conv_3x3"):
        Architecture.from_dict(data)


def test_ops_too_cheap_for_the_target_are_promoted_least_confident_first(net):
    """Every residual layer leans to 'zero' (removed), one of them barely: a target its
    full-width network cannot reach promotes that layer first, and then meets the target."""
    residual = [layer for layer in net.layers if layer.residual]
    with torch.no_grad():
        for i, layer in enumerate(residual):
            a = net.alphas[layer.name]
            a.zero_()
            a[layer.names.index("zero")] = 0.1 if i == 0 else 5.0 + i
            a[layer.names.index("conv_3x3")] = 0.0
            a[layer.names.index("mbconv_k3_e6")] = -3.0
    searched = net.derive_ops()
    assert all(searched[layer.name] == "zero" for layer in residual)
    cheap = net.architecture(searched, net.full_widths()).cost().macs
    one_more = dict(searched, **{residual[0].name: "conv_3x3"})
    target = 0.97 * net.architecture(one_more, net.full_widths()).cost().macs
    assert cheap < 0.9 * target
    with pytest.warns(UserWarning, match="least confident choices were moved to costlier ops"):
        d = derive(net, target)
    assert d.ops[residual[0].name] == "conv_3x3"  # the barely-removed layer comes back ...
    assert all(d.ops[layer.name] == "zero" for layer in residual[1:])  # ... and only it
    assert abs(d.arch.cost().macs - target) <= 0.03 * target
    with pytest.warns(UserWarning, match="cannot meet the MACs target"):
        kept = derive(net, target, promote_ops=False)
    assert kept.ops == searched
