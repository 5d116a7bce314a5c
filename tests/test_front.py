"""The sandwich rule and the Pareto front: subnets as discrete points, the sandwich step's
gradients, scoring with BatchNorm re-estimated (equal to the slimmed subnet's accuracy), the
Pareto set, growth to a budget, Optuna's strategies, and `maskednas front` end to end."""
from __future__ import annotations

import contextlib
import itertools
import json
import math

import pytest
import torch

from conftest import maskednas_main, small_config
from maskednas.derive import slim
from maskednas.pipeline.setup import build_supernet, data_meta, load_data
from maskednas.derive.discretize import Derivation
from maskednas.search.front import Candidate, FrontSearch, SubnetScorer, pareto
from maskednas.search.penalty import bind_targets
from maskednas.supernet.subnets import Subnet, SubnetSpace
from maskednas.training.finetune import evaluate, recalibrate_batchnorm
from maskednas.training.losses import cross_entropy, distillation_loss

FRACTIONS = [0.25, 0.5, 0.75, 1.0]


def macs(space: SubnetSpace, subnet: Subnet) -> float:
    return float(space.architecture(subnet).cost().macs)


def test_largest_is_the_dense_network_and_widths_keep_nested_channels(tiny_net):
    space = SubnetSpace(tiny_net, FRACTIONS)
    assert macs(space, space.largest()) == tiny_net.dense_architecture().cost().macs
    assert macs(space, space.smallest()) < macs(space, space.sample(torch.Generator().manual_seed(0)))
    for group, widths in space.width_choices.items():
        assert widths[-1] == tiny_net.full_widths()[group] and list(widths) == sorted(set(widths))
        kept = [set(space.keep(Subnet({}, {group: w}))[group].tolist()) for w in widths]
        assert all(len(k) == w for k, w in zip(kept, widths))
        assert all(a < b for a, b in itertools.pairwise(kept))  # each narrower one a strict subset


def test_growing_is_monotone_and_ends_at_the_largest_subnet(tiny_net):
    space = SubnetSpace(tiny_net, FRACTIONS)
    small = space.smallest()
    assert space.grown(small, 0.0) == small
    assert space.grown(small, 1.0, ops_too=True) == space.largest()
    costs = [macs(space, space.grown(small, s / 10, ops_too=True)) for s in range(11)]
    assert costs == sorted(costs) and costs[0] < costs[-1]
    wider = space.wider(small, "stem")
    assert wider.widths["stem"] == small.widths["stem"] + 1
    assert space.wider(space.largest(), "stem") is None


def test_a_sandwich_step_sums_the_largests_loss_and_the_smallests_distillation(tmp_path):
    from maskednas.pipeline.setup import prepare_search
    cfg = small_config(tmp_path, "search.strategy=sandwich", "search.targets.macs=null",
                       "search.sandwich.random_subnets=0", "search.grad_clip=1e9")
    searcher = prepare_search(cfg, tmp_path / "run")
    net = searcher.net
    x, y = next(iter(searcher.train_loader))
    space = SubnetSpace(net, cfg.search.sandwich.width_fractions)
    arch_before = [p.detach().clone() for p in net.arch_parameters()]
    net.train()
    # the expected gradient: CE of the largest plus KL of the smallest toward the largest
    expected = {}
    space.activate(space.largest())
    largest = net(x)
    grads = torch.autograd.grad(cross_entropy(largest, y), net.weight_parameters(), allow_unused=True)
    space.activate(space.smallest())
    small = net(x)
    grads2 = torch.autograd.grad(distillation_loss(small, largest.detach(), 1.0), net.weight_parameters(),
                                 allow_unused=True)
    net.soft_mask()
    for p, g1, g2 in zip(net.weight_parameters(), grads, grads2):
        if g1 is not None or g2 is not None:
            expected[p] = sum(g for g in (g1, g2) if g is not None)
    searcher.w_opt.step = lambda: None  # keep the gradients to compare
    stats = searcher.sandwich_step(space, x, y)
    assert expected and all(torch.allclose(p.grad, g, atol=1e-6) for p, g in expected.items())
    assert all(p.grad is None for p in net.weight_parameters() if p not in expected)
    assert torch.equal(stats[1], (largest.argmax(1) == y).sum().float())
    assert all(torch.equal(a, b) for a, b in zip(arch_before, net.arch_parameters()))
    assert not any(m.hard for m in net.masks.values())  # the step leaves the supernet soft


def test_a_sandwich_search_trains_only_the_weights_and_resumes(tmp_path):
    from conftest import interrupted_and_resumed
    from maskednas.pipeline.setup import prepare_search
    cfg = small_config(tmp_path, "search.strategy=sandwich", "search.targets.macs=null")
    straight = prepare_search(cfg, tmp_path / "a")
    before = [p.detach().clone() for p in straight.net.arch_parameters()]
    straight.run()
    assert all(torch.equal(a, b) for a, b in zip(before, straight.net.arch_parameters()))
    assert cfg.search.warmup_epochs == 1 and math.isnan(straight.history[0]["smallest_acc"])  # largest only
    assert straight.history[-1]["smallest_acc"] > 0.1  # digits: chance is 0.1
    resumed = interrupted_and_resumed(cfg, tmp_path / "b", epoch=1)
    for a, b in zip(straight.net.state_dict().values(), resumed.net.state_dict().values()):
        assert torch.equal(a, b)


def test_a_subnets_score_is_its_slimmed_networks_accuracy_and_restores_the_supernet(tiny_net):
    space = SubnetSpace(tiny_net, FRACTIONS)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(10, (16,), generator=g))
               for _ in range(3)]
    state = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    scorer = SubnetScorer(space, batches[:2], batches[2:], autocast=contextlib.nullcontext)
    subnet = space.sample(g)
    score = scorer(subnet)
    assert all(torch.equal(v, tiny_net.state_dict()[k]) for k, v in state.items())
    used = tiny_net.used_groups(subnet.ops)
    compact = slim(tiny_net, Derivation(space.architecture(subnet), subnet.ops, space.keep(subnet, used)))
    recalibrate_batchnorm(compact, batches[:2], 2)
    assert score == evaluate(compact, batches[2:])["acc"]


def candidate(acc, cost, feasible=True) -> Candidate:
    return Candidate(Subnet({}, {}), acc, {"macs": cost}, feasible)


def test_the_pareto_set_is_the_undominated_feasible_candidates():
    a, b, c, d, e = candidate(0.5, 10), candidate(0.6, 20), candidate(0.55, 25), candidate(0.9, 30, False), candidate(0.7, 40)
    assert pareto([c, e, a, d, b], ["macs"]) == [a, b, e]


def fake_front(tiny_net, strategy="evolution", trials=12, seed=0):
    """A front search whose score is the share of channels kept (no data needed)."""
    from maskednas.pipeline.config import FrontConfig
    space = SubnetSpace(tiny_net, FRACTIONS)
    full = tiny_net.full_widths()
    score = lambda s: sum(s.widths.values()) / sum(full.values())
    cfg = FrontConfig(strategy=strategy, trials=trials, population=4)
    return FrontSearch(space, score, bind_targets(["macs"], tiny_net), {}, cfg, seed)


def test_each_strategy_is_its_optuna_sampler():
    import optuna
    from maskednas.search.front import sampler
    assert isinstance(sampler("evolution", 0, 8), optuna.samplers.NSGAIISampler)
    assert isinstance(sampler("bayesian", 0, 8), optuna.samplers.TPESampler)
    assert isinstance(sampler("random", 0, 8), optuna.samplers.RandomSampler)


@pytest.mark.parametrize("strategy", ["evolution", "bayesian", "random"])
def test_each_strategy_scores_its_trials_reproducibly(tiny_net, strategy):
    first = fake_front(tiny_net, strategy).run(progress=False)
    again = fake_front(tiny_net, strategy).run(progress=False)
    assert len(first) <= 12 and len({tuple(sorted(c.subnet.params().items())) for c in first}) == len(first)
    assert first[0].subnet == fake_front(tiny_net).space.largest()  # enqueued first
    assert [c.subnet for c in first] == [c.subnet for c in again]
    assert len({tuple(c.subnet.widths.values()) for c in first}) > 6


def test_each_budget_gets_a_subnet_within_the_tolerance_under_it(tiny_net):
    search = fake_front(tiny_net, "random", trials=10)
    search.run(progress=False)
    dense = search.objectives["macs"].dense()
    for fraction in (0.2, 0.35, 0.5, 0.75):
        pick = search.pick(fraction * dense, 0.03)
        assert 0.97 * fraction * dense <= pick.costs["macs"] <= fraction * dense
    assert search.pick(1.0, 0.03) is None  # below every subnet


def test_constraints_make_subnets_infeasible_and_bound_the_growth(tiny_net):
    search = fake_front(tiny_net, "random", trials=10)
    params = bind_targets(["params"], tiny_net)["params"]
    limit = 0.4 * params.dense()
    search.constraints = {"params": (params, limit)}
    search.run(progress=False)
    assert all(c.feasible == (params.of(search.space.architecture(c.subnet)) <= limit)
               for c in search.candidates)
    # what the samplers steer by: each trial's constraint, <= 0 exactly when feasible
    assert [t.constraints["params"] <= 0 for t in search.study.trials] == [c.feasible for c in search.candidates]
    pick = search.pick(search.objectives["macs"].dense(), 0.03)
    assert params.of(search.space.architecture(pick.subnet)) <= limit


def test_darts_cells_are_refused(tmp_path):
    from maskednas.pipeline.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="sandwich trains subnets of one op per choice"):
        load_config("darts_digits", ["search.strategy=sandwich", "search.targets.macs=null"])
    with pytest.raises(ValueError, match="derives cells .* not one op per choice"):
        SubnetSpace(build_supernet(load_config("darts_digits"), data_meta(load_data(load_config("darts_digits"))),
                                   torch.device("cpu")), FRACTIONS)


@pytest.mark.parametrize("override, message", [
    ("front.strategy=annealing", "front.strategy must be one of evolution, bayesian, random"),
    ("front.objectives=[flops]", "unknown cost target 'flops'"),
    ("front.budgets=[0.5, 1.5]", "front.budgets must be fractions in"),
    ("front.constraints.params.fraction=2", "front.constraints.params needs exactly one of"),
    ("search.sandwich.width_fractions=[0, 1]", "width_fractions must be fractions"),
    ("search.sandwich.width_fractions=[0.25, 0.5]", "1 among them"),
    ("search.regime=bilevel", "takes no architecture steps"),
    ("front.budgets=[0.5, 0.5]", "names a budget twice"),
    ("front.name=../elsewhere", "front.name must be a plain folder name"),
    ("front.trials=1", "front.trials must be >= 2"),
    ("search.strategy=differentiable", "this run's search is search.strategy=differentiable"),
    ("search.targets.macs.fraction=0.5", "penalises no cost"),
    ("front.budgets=[0.001, 0.5]", "front.budgets [0.001] of the dense network's"),
])
def test_bad_front_settings_are_refused_before_anything_is_written(tmp_path, capsys, override, message):
    with pytest.raises(SystemExit) as e:
        maskednas_main(["front", f"out_dir={tmp_path}", override])
    assert message in str(e.value)
    assert not any(tmp_path.iterdir())


def test_run_refuses_to_derive_from_a_sandwich_supernet(tmp_path):
    from maskednas.pipeline import ConfigError, run
    cfg = small_config(tmp_path, "search.strategy=sandwich", "search.targets.macs=null")
    with pytest.raises(ConfigError, match="maskednas front"):
        run(cfg, tmp_path / "run")


def test_the_front_command_trains_once_and_exports_a_subnet_per_budget(tmp_path):
    import maskednas
    from conftest import SMALL_RUN
    budgets = [0.3, 0.4, 0.5, 0.6, 0.8]
    maskednas_main(["front", *SMALL_RUN, f"out_dir={tmp_path}", "name=f", "search.warmup_epochs=0",
                    "front.trials=8", "front.population=4", f"front.budgets={budgets}"])
    run = tmp_path / "f"
    result = json.loads((run / "front.json").read_text())
    assert (run / "front.png").stat().st_size > 0 and "Pareto front" in (run / "front.md").read_text()
    assert len(result["candidates"]) >= 8 and result["pareto"]
    dense = result["dense"]["macs"]
    for fraction in budgets:
        name = f"front-macs-{fraction:g}"
        model = maskednas.load(run / name)
        exported = model.arch.cost().macs
        assert 0.97 * fraction * dense <= exported <= fraction * dense
        assert result["exports"][name]["macs"] == exported == result["picks"][name]["macs"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0}).Reload()
    assert {f"front/front-macs-{b:g}/val_acc" for b in budgets} <= set(events.Tags()["scalars"])
    assert "front/pareto" in events.Tags()["images"] and events.Scalars("acc/smallest")
    # the same supernet, searched again with another strategy: no new training
    before = (run / "search.pt").stat().st_mtime_ns
    maskednas_main(["front", "--run", str(run), "front.strategy=random", "front.trials=4",
                    "front.budgets=[0.5]"])
    assert (run / "search.pt").stat().st_mtime_ns == before
    assert json.loads((run / "front.json").read_text())["strategy"] == "random"
