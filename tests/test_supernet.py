"""Parameter split, cost model exactness, targets."""
import pytest
import torch

from conftest import randomize, tiny_space
from maskednas.ops import WidthRounding
from maskednas.export import build
from maskednas.derive import derive
from maskednas.export.flops import fvcore_report
from maskednas.search.penalty import UnreachableTargetError, resolve_targets
from maskednas.supernet import MacroSpaceConfig, MacroSupernet, StageSpec, dense_cost, expected_cost, smallest_cost
from maskednas.supernet.cost_model import discrete_cost


def test_arch_and_weight_parameters_are_disjoint_and_cover_everything(tiny_net):
    arch = {id(p) for p in tiny_net.arch_parameters()}
    weights = {id(p) for p in tiny_net.weight_parameters()}
    assert arch and weights and not arch & weights
    assert arch | weights == {id(p) for p in tiny_net.parameters()}
    # registered parameters: they live in the state_dict (and so survive DDP and checkpoints)
    keys = tiny_net.state_dict().keys()
    assert sum(k.startswith("alphas.") for k in keys) == len(tiny_net.layers)
    assert sum(k.startswith("masks.") and k.endswith(".logits") for k in keys) == len(tiny_net.masks)


def test_tied_channels_share_one_mask(tiny_net):
    # every layer of a stage writes the stage's residual stream: one group
    stage2 = [layer for layer in tiny_net.layers if layer.name.startswith("s2")]
    assert {layer.out_group for layer in stage2} == {"s2"}
    assert [layer.residual for layer in stage2] == [False, True]


@pytest.mark.filterwarnings("ignore:the chosen ops cannot meet")  # any target: equality is the point
@pytest.mark.parametrize("target", [None, 0.3, 0.6])
def test_cost_model_at_discrete_architecture_equals_fvcore(tiny_net, target):
    dense = float(dense_cost(tiny_net).macs)
    d = derive(tiny_net, None if target is None else target * dense)
    tiny_net.hard_mask(d.ops, d.keep)
    with torch.no_grad():
        fixed = expected_cost(tiny_net)  # alpha one-hot, masks hard
    model = build(d.arch)
    flops, params, _ = fvcore_report(model, torch.randn(1, 1, 8, 8))
    assert float(fixed.macs) == d.arch.cost().macs == flops
    assert float(fixed.params) == d.arch.cost().params == params


def test_discrete_cost_is_the_cost_of_the_derived_network(tiny_net):
    with torch.no_grad():  # ties at gate = 1/2 count as kept on both sides
        for mask in tiny_net.masks.values():
            mask.logits[::3] = 0.0
    d = derive(tiny_net)  # no target: argmax ops, gates of at least one half
    assert float(discrete_cost(tiny_net).macs.detach()) == d.arch.cost().macs


def test_discrete_cost_has_gradients_for_alpha_and_masks(tiny_net):
    cost = discrete_cost(tiny_net)
    grads = torch.autograd.grad(cost.macs, tiny_net.arch_parameters(), allow_unused=True)
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("estimator", [discrete_cost, expected_cost])
def test_penalty_gradients_do_not_vanish_when_the_search_is_cold(tiny_net, estimator):
    """At T = 0.01 the relaxation saturates: every gradient at the search's temperature is 0
    for logits 1 away from the threshold. The surrogate at T = 1 keeps them all, and the cost
    itself is unchanged."""
    torch.manual_seed(0)
    with torch.no_grad():
        for mask in tiny_net.masks.values():
            mask.logits.copy_(torch.where(torch.rand(mask.channels) < 0.5, -1.0, 1.0))
        for alpha in tiny_net.alphas.values():
            alpha.copy_(torch.randperm(len(alpha)).float())  # margins of 1 between ops
    tiny_net.set_temperature(0.01)
    cold, surrogate = estimator(tiny_net), estimator(tiny_net, surrogate_temperature=1.0)
    assert float(cold.macs.detach()) == float(surrogate.macs.detach())
    assert float(cold.params.detach()) == float(surrogate.params.detach())
    used = tiny_net.used_groups(tiny_net.derive_ops())  # the others cost nothing in `cold`
    params = [*tiny_net.alphas.values(), *(tiny_net.masks[g].logits for g in used)]
    for g in torch.autograd.grad(cold.macs, params, allow_unused=True):
        assert g is None or float(g.abs().max()) < 1e-30
    for g in torch.autograd.grad(surrogate.macs, params):
        assert bool((g.abs() > 0).all())  # every alpha and every used mask logit


def test_expected_cost_by_hand_for_a_one_layer_space():
    space = MacroSpaceConfig(stem_channels=4, stages=[StageSpec(8, 1, 2)],
                             first_candidates=["conv_3x3", "skip_connect"], candidates=["zero"])
    net = MacroSupernet(space, in_channels=3, num_classes=5, input_size=8)
    with torch.no_grad():
        net.alphas["s1l0"].copy_(torch.log(torch.tensor([0.25, 0.75])))
        net.masks["stem"].logits.fill_(100.0)  # gates 1.0
        net.masks["s1"].logits.fill_(0.0)  # gates 0.5: 4 expected channels
    c = expected_cost(net)
    stem = 9 * 3 * 4 * 64 + 2 * 4 * 64
    conv = 9 * 4 * 4 * 16 + 2 * 4 * 16  # conv 3x3 stride 2 into 4 expected channels
    proj = 1 * 4 * 4 * 16 + 2 * 4 * 16  # skip across a stride: 1x1 projection
    head = 4 * 16 + 4 * 5
    assert float(c.macs.detach()) == pytest.approx(stem + 0.25 * conv + 0.75 * proj + head, rel=1e-6)


def test_fractional_and_absolute_targets(tiny_net):
    dense = dense_cost(tiny_net)
    t = resolve_targets({"macs": {"fraction": 0.5}}, tiny_net)
    assert t["macs"] == 0.5 * dense.macs and "params" not in t
    t = resolve_targets({"macs": {"value": 12345, "fraction": 0.5}, "params": {"fraction": 0.5}}, tiny_net)
    assert t["macs"] == 12345 and t["params"] == 0.5 * dense.params


def test_unreachable_target_fails_with_the_smallest_reachable_figure(tiny_net):
    smallest = smallest_cost(tiny_net).macs
    with pytest.raises(UnreachableTargetError) as e:
        resolve_targets({"macs": {"value": smallest - 1}}, tiny_net)
    assert f"{smallest:,.0f}" in str(e.value)
    resolve_targets({"macs": {"value": smallest}}, tiny_net)  # reachable: fine


def test_fixed_supernet_runs_only_the_chosen_op(tiny_net):
    d = derive(tiny_net)
    tiny_net.hard_mask(d.ops, d.keep)
    weights = tiny_net.op_weights()
    for layer in tiny_net.layers:
        assert weights[layer.name].tolist() == [float(n == d.ops[layer.name]) for n in layer.names]
    tiny_net.soft_mask()
    with torch.no_grad():
        soft = tiny_net.op_weights().values()
    assert all(abs(float(w.sum()) - 1) < 1e-6 and w.min() > 0 for w in soft)


def test_invalid_space_is_rejected():
    with pytest.raises(ValueError, match="'zero' cannot be a first-layer candidate"):
        MacroSupernet(tiny_space(first_candidates=["zero", "conv_3x3"]), 1, 10, 8)
    with pytest.raises(ValueError, match="stride 1 or 2"):
        MacroSupernet(tiny_space(stages=[StageSpec(4, 1, 3)]), 1, 10, 8)


@pytest.mark.parametrize("round_to,min_channels", [(1, 1), (4, 4), (8, 8), (3, 2)])
def test_penalty_prices_the_widths_the_discretizer_keeps(round_to, min_channels):
    """An unbalanced mask pattern (1 to all channels kept per group): the penalty's discrete
    cost, with the run's rounding, is the derived network's cost, exactly."""
    torch.manual_seed(0)
    net = MacroSupernet(tiny_space(stem=16, stages=[StageSpec(16, 2, 1), StageSpec(24, 2, 2)]),
                        1, 10, 8)
    randomize(net)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for i, mask in enumerate(net.masks.values()):
            kept = 1 + i * 5 % mask.channels  # a different count in every group
            mask.logits.copy_(torch.where(torch.randperm(mask.channels, generator=g) < kept, 1.0, -1.0))
    rounding = WidthRounding(round_to, min_channels)
    d = derive(net, round_to=round_to, min_channels=min_channels)
    assert float(discrete_cost(net, rounding).macs.detach()) == d.arch.cost().macs
    assert float(discrete_cost(net, rounding).params.detach()) == d.arch.cost().params


def test_selection_follows_alpha_through_near_ties():
    """Adam's first step leaves alphas 1e-7 apart (these five are measured on digits); a float32
    log-softmax rounds them to ties, so selection ranks in float64 and follows alpha."""
    net = MacroSupernet(tiny_space(candidates=["conv_3x3", "sep_conv_3x3", "mbconv_k3_e3", "zero",
                                               "mbconv_k3_e6"]), 1, 10, 8)
    layer = next(layer for layer in net.layers if layer.residual)
    near = torch.tensor([0.0999998226761818, 0.09999987483024597, 0.0999995693564415,
                         -0.09999995678663254, 0.09999993443489075])
    with torch.no_grad():
        net.alphas[layer.name].copy_(near)
    rounded = torch.log_softmax(near, -1)  # float32: the order this would lose
    assert not bool(rounded[4] > rounded[:4].max())
    for t in (1.0, 0.01):
        net.set_temperature(t)
        assert net.derive_ops()[layer.name] == "mbconv_k3_e6"
        assert int(net.select(net.op_logits())[layer.name].argmax()) == 4
