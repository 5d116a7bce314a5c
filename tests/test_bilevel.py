"""The bilevel steps: which parameters each step may change, and the second-order gradient."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from conftest import randomize, small_config, tiny_space
from maskednas.pipeline.setup import prepare_search
from maskednas.search.architect import Architect
from maskednas.search.penalty import CostPenalty
from maskednas.supernet import MacroSupernet, dense_cost
from maskednas.supernet.cost_model import expected_point


def batches(seed=0, n=12, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    make = lambda: (torch.randn(n, 1, 8, 8, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g))
    return make(), make()


def snapshot(params):
    return [p.detach().clone() for p in params]


def changed(before, params):
    return [not torch.equal(b, p) for b, p in zip(before, params)]


@pytest.fixture
def setup():
    torch.manual_seed(0)
    net = MacroSupernet(tiny_space(), 1, 10, 8)
    randomize(net)
    net.train()
    penalty = CostPenalty(net, {"macs": 0.5 * float(dense_cost(net).macs)}, weight=1.0)
    return net, penalty


def test_searchers_weight_step_changes_no_architecture_parameter(tmp_path):
    """The search loop's own weight step (`Searcher.weight_step`), on a real search setup."""
    searcher = prepare_search(small_config(tmp_path), tmp_path)
    net = searcher.net.train()
    train = next(iter(searcher.train_loader))
    arch, weights = snapshot(net.arch_parameters()), snapshot(net.weight_parameters())
    loss, correct = searcher.weight_step(*train)
    assert torch.isfinite(loss) and 0 <= int(correct) <= len(train[1])
    assert not any(changed(arch, net.arch_parameters()))
    assert sum(changed(weights, net.weight_parameters())) > 0.9 * len(weights)
    assert all(p.grad is None for p in net.arch_parameters())


@pytest.mark.parametrize("overrides,alpha_decay,mask_decay", [
    (["search.arch_weight_decay=0.001"], 0.001, 0.0),
    (["search.arch_weight_decay=0.001", "search.mask_weight_decay=0.01"], 0.001, 0.01),
])
def test_architecture_weight_decay_reaches_mask_logits_only_when_asked(tmp_path, overrides,
                                                                       alpha_decay, mask_decay):
    """Decay pulls a mask logit toward 0 (gate 1/2, the keep threshold): alpha's decay must not
    apply to the masks. With no gradient, one Adam step moves a parameter only by its decay."""
    searcher = prepare_search(small_config(tmp_path, *overrides), tmp_path)
    net, opt = searcher.net, searcher.architect.optimizer
    assert [g["weight_decay"] for g in opt.param_groups] == [alpha_decay, mask_decay]
    with torch.no_grad():
        for p in net.arch_parameters():
            p.fill_(2.0)
            p.grad = torch.zeros_like(p)
    opt.step()
    alphas_moved = [bool((p != 2.0).all()) for p in net.alphas.values()]
    masks_moved = [bool((m.logits != 2.0).all()) for m in net.masks.values()]
    assert all(alphas_moved) and all(masks_moved) == (mask_decay > 0) and any(masks_moved) == (mask_decay > 0)


@pytest.mark.parametrize("order", [1, 2])
def test_architecture_step_changes_no_weight(setup, order):
    net, penalty = setup
    train, val = batches()
    arch, weights = snapshot(net.arch_parameters()), snapshot(net.weight_parameters())
    Architect(net, penalty, lr=0.01, order=order).step(train, val, xi=0.05)
    assert not any(changed(weights, net.weight_parameters()))
    assert all(changed(arch, net.arch_parameters()))  # every alpha and every mask moved


@pytest.mark.parametrize("hessian_eps", [1e-7, 1e-8])
def test_second_order_gradient_matches_finite_differences(hessian_eps):
    """d/d(alpha, m) of L_val(w - xi * dL_train/dw, alpha, m) + penalty, in float64: the
    unrolled gradient with the finite-difference Hessian-vector product against central
    differences of the objective along a random direction.

    Steps are tiny because a ReLU network's gradient is only piecewise smooth: tens of thousands
    of pre-activations lie near zero, and a step of 1e-4 in weight space already crosses kinks
    (measured: the estimate drifts by tens of percent at hessian_eps=1e-6). DARTS' default 0.01
    is a cheap, coarse approximation of the same quantity."""
    torch.manual_seed(0)
    net = MacroSupernet(tiny_space(), 1, 10, 8).double()
    randomize(net)
    net.train()
    penalty = CostPenalty(net, {"macs": 0.4 * float(dense_cost(net).macs)}, weight=1.0)
    train, val = batches(dtype=torch.float64)
    xi, wd = 0.1, 0.0
    arch = Architect(net, penalty, lr=0.0, order=2, estimator="expected", hessian_eps=hessian_eps)
    grads, _ = arch.second_order_grads(train, val, xi, wd)

    named = dict(net.named_parameters())
    weights = {n: named[n].detach() for n in arch.weight_names}

    def objective(alpha_values):
        a = dict(zip(arch.arch_names, alpha_values))
        w = {n: v.clone().requires_grad_() for n, v in weights.items()}
        loss = F.cross_entropy(functional_call(net, {**w, **a}, (train[0],)), train[1])
        g = torch.autograd.grad(loss, list(w.values()))
        unrolled = {n: w[n] - xi * gi for n, gi in zip(w, g)}
        logits = functional_call(net, {**unrolled, **a}, (val[0],))
        for name, p in a.items():  # the penalty reads the module's own arch parameters
            named[name].data.copy_(p)
        return F.cross_entropy(logits, val[1]) + penalty(*expected_point(net))[0]

    base = [named[n].detach().clone() for n in arch.arch_names]
    direction = [torch.randn_like(b) for b in base]
    h = 1e-7
    plus = objective([b + h * d for b, d in zip(base, direction)]).detach()
    minus = objective([b - h * d for b, d in zip(base, direction)]).detach()
    for n, b in zip(arch.arch_names, base):
        named[n].data.copy_(b)
    numeric = float((plus - minus) / (2 * h))
    analytic = float(sum((g * d).sum() for g, d in zip(grads, direction)))
    assert analytic == pytest.approx(numeric, rel=1e-3)
    # and the second-order term matters: the first-order gradient differs
    first, _ = arch.first_order_grads(val)
    first_dir = float(sum((g * d).sum() for g, d in zip(first, direction)))
    assert abs(first_dir - numeric) > 10 * abs(analytic - numeric)


def test_a_second_order_step_leaves_batchnorm_statistics_unchanged(setup):
    """Its passes run at virtual weights (w', w + eps v, w - eps v): running statistics gathered
    there would describe no network the search ever has."""
    net, penalty = setup
    train, val = batches()
    before = {n: b.clone() for n, b in net.named_buffers()}
    Architect(net, penalty, lr=0.01, order=2).step(train, val, xi=0.05)
    assert before.keys() and all(torch.equal(before[n], b) for n, b in net.named_buffers())
