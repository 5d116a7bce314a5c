"""What the architecture step is driven by: the loss's and the penalty's gradients taken apart
(their norms logged, the loss's share scaled, 0 for the "penalty only" ablation), distillation
in the search, and how many decisions an epoch changes."""
import pytest
import torch
import torch.nn.functional as F

from conftest import randomize, tiny_space
from maskednas.search.architect import Architect
from maskednas.search.loop import decision_margin_spread, decisions, search_loss
from maskednas.search.penalty import CostPenalty
from maskednas.supernet import MacroSupernet, dense_cost
from maskednas.supernet.cost_model import ESTIMATORS
from maskednas.training.losses import distillation_loss


def batch(seed=0, n=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.fixture
def net():
    torch.manual_seed(0)
    net = MacroSupernet(tiny_space(), 1, 10, 8)
    randomize(net)
    return net.train()


def parts(net, penalty, x, y):
    """The loss's and the penalty's gradients to the architecture, each computed on its own."""
    params = net.arch_parameters()
    loss_grads = torch.autograd.grad(F.cross_entropy(net(x), y), params, allow_unused=True)
    value, _ = penalty(*ESTIMATORS.get("discrete")(net, surrogate_temperature=1.0))
    penalty_grads = torch.autograd.grad(value, params, allow_unused=True)
    zero = lambda gs: [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]
    return zero(loss_grads), zero(penalty_grads)


@pytest.mark.parametrize("weight", [1.0, 0.25, 0.0])
def test_the_architecture_gradient_is_the_weighted_loss_part_plus_the_penalty_part(net, weight):
    penalty = CostPenalty(net, {"macs": 0.3 * float(dense_cost(net).macs)}, weight=1.0)
    x, y = batch()
    loss_grads, penalty_grads = parts(net, penalty, x, y)
    assert all(g.abs().sum() > 0 for g in penalty_grads[:len(net.alphas)])  # both parts are there
    assert sum(g.abs().sum() for g in loss_grads) > 0
    architect = Architect(net, penalty, lr=0.1, loss_weight=weight)
    grads, stats = architect.first_order_grads((x, y))
    for g, gl, gp in zip(grads, loss_grads, penalty_grads):
        torch.testing.assert_close(g, weight * gl + gp, rtol=1e-5, atol=1e-7)
    n = len(net.alphas)
    for part, gs in (("loss", loss_grads), ("penalty", penalty_grads)):
        norm = lambda chosen: float(torch.cat([g.flatten() for g in chosen]).norm())
        assert float(stats[f"grad_norm/{part}"]) == pytest.approx(norm(gs), rel=1e-5)
        assert float(stats[f"grad_norm/{part}/op_logits"]) == pytest.approx(norm(gs[:n]), rel=1e-5)
        assert float(stats[f"grad_norm/{part}/mask_logits"]) == pytest.approx(norm(gs[n:]), rel=1e-5)


def test_penalty_only_steps_are_the_same_for_any_batch(net):
    """With the loss's share 0 the data cannot move the architecture: two different batches
    give the same architecture gradient (and a full share gives different ones)."""
    penalty = CostPenalty(net, {"macs": 0.3 * float(dense_cost(net).macs)}, weight=1.0)
    only, full = Architect(net, penalty, lr=0.1, loss_weight=0.0), Architect(net, penalty, lr=0.1)
    a, b = (only.first_order_grads(batch(s))[0] for s in (0, 1))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    a, b = (full.first_order_grads(batch(s))[0] for s in (0, 1))
    assert not all(torch.equal(u, v) for u, v in zip(a, b))


def test_the_search_loss_distils_from_the_teacher():
    torch.manual_seed(0)
    teacher = torch.nn.Linear(4, 3)
    x, y, logits = torch.randn(5, 4), torch.randint(0, 3, (5,)), torch.randn(5, 3)
    plain = search_loss(None, 0.5, 4.0)(logits, x, y)
    assert float(plain) == pytest.approx(float(F.cross_entropy(logits, y)))
    mixed = search_loss(teacher, 0.5, 4.0)(logits, x, y)
    with torch.no_grad():
        expected = 0.5 * F.cross_entropy(logits, y) + 0.5 * distillation_loss(logits, teacher(x), 4.0)
    assert float(mixed) == pytest.approx(float(expected), rel=1e-6)


def test_decisions_count_the_choices_and_channels_an_update_changes(net):
    ops, kept = decisions(net)
    assert len(ops) == len(net.alphas) and len(kept) == sum(m.channels for m in net.masks.values())
    with torch.no_grad():
        first = next(iter(net.alphas.values()))
        first[first.argmin()] += 100.0  # one choice changes its op
        mask = next(iter(net.masks.values()))
        mask.logits[:2] = -5.0  # two channels are pruned
    ops2, kept2 = decisions(net)
    assert int((ops != ops2).sum()) == 1 and int((kept != kept2).sum()) == 2 - int((~kept[:2]).sum())


def test_margin_spread_is_zero_in_lockstep_and_grows_when_choices_differ(net):
    with torch.no_grad():
        for a in net.alphas.values():
            a.copy_(torch.arange(a.numel(), dtype=a.dtype))  # every choice: margin 1
    assert decision_margin_spread(net) == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        next(iter(net.alphas.values()))[-1] += 3.0
    assert decision_margin_spread(net) > 0.5
