"""Latency tables and latency targets: interpolation, gradients, a search that meets a latency
target (on a made-up table: no timing in the assertions), table identity, caching, measuring."""
from __future__ import annotations

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import synthetic_ms, synthetic_table, tiny_space
from maskednas.derive.discretize import budget, derive
from maskednas.latency import LatencyModel, LatencyTable, LatencyTableError, measure_table
from maskednas.latency.cache import obtain_table
from maskednas.latency.table import TableEntry, grid_widths, monotone
from maskednas.pipeline import load_config, run
from maskednas.pipeline.config import ConfigError, search_goals
from maskednas.search.penalty import CostPenalty, UnreachableTargetError, resolve_targets
from maskednas.supernet import MacroSupernet
from maskednas.supernet.cost_model import discrete_point, expected_point


def table_of(values: torch.Tensor, grid: list[list[int]]) -> LatencyTable:
    return LatencyTable({}, {"p": TableEntry(grid, values.tolist())})


def test_interpolation_reproduces_the_grid_and_is_monotone_where_the_grid_is():
    g = torch.Generator().manual_seed(0)
    grid = [[1, 4, 9, 16], [1, 3, 8], [2, 7]]
    steps = torch.rand(4, 3, 2, generator=g, dtype=torch.float64)
    values = steps.cumsum(0).cumsum(1).cumsum(2)  # increasing along every axis
    table = table_of(values, grid)
    for i, a in enumerate(grid[0]):
        for j, b in enumerate(grid[1]):
            for k, c in enumerate(grid[2]):
                assert float(table.ms("p", [a, b, c])) == float(values[i, j, k])
    # along each axis, at random points of the others: never decreasing
    for axis in range(3):
        for _ in range(20):
            point = [float(torch.empty(()).uniform_(ax[0], ax[-1], generator=g)) for ax in grid]
            line = torch.linspace(grid[axis][0], grid[axis][-1], 50, dtype=torch.float64)
            ms = [float(table.ms("p", [*point[:axis], w, *point[axis + 1:]])) for w in line]
            assert all(b >= a - 1e-12 for a, b in zip(ms, ms[1:]))
    # between two grid points of one axis: the straight line between them
    assert float(table.ms("p", [2.5, 1, 2])) == pytest.approx(float(values[:2, 0, 0].mean()))
    # outside the grid: clamped
    assert float(table.ms("p", [0.2, 1, 2])) == float(values[0, 0, 0])


def test_measured_dips_are_lifted_and_monotone_grids_unchanged():
    noisy = torch.tensor([[1.0, 0.8, 1.2], [0.9, 1.1, 1.0]], dtype=torch.float64)
    lifted = monotone(noisy)
    assert torch.equal(lifted, torch.tensor([[1.0, 1.0, 1.2], [1.0, 1.1, 1.2]], dtype=torch.float64))
    assert torch.equal(monotone(lifted), lifted)


def test_grid_widths_span_one_to_full():
    assert grid_widths(16, 4) == [1, 6, 11, 16]
    assert grid_widths(2, 4) == [1, 2]


@pytest.fixture
def latency_net():
    torch.manual_seed(0)
    net = MacroSupernet(tiny_space(), in_channels=1, num_classes=10, input_size=8).double()
    with torch.no_grad():
        for p in net.arch_parameters():
            p.copy_(torch.randn(p.shape, dtype=p.dtype))
    return net, LatencyModel(net, net.latency_parts(), synthetic_table(net))


def test_table_latency_of_a_derived_network_is_the_sum_of_its_parts(latency_net):
    net, model = latency_net
    d = derive(net)
    arch = d.arch
    expected = synthetic_ms(model.parts[0], (arch.stem_channels,)) + synthetic_ms(
        model.parts[-1], (arch.out_channels,))
    for part in model.parts[1:-1]:
        widths = part.locate(arch)
        if widths is not None:
            expected += synthetic_ms(part, widths)  # linear in widths: interpolation is exact
    assert model.architecture_ms(arch) == pytest.approx(expected, rel=1e-12)
    # the supernet's figure at the derived (one-hot, whole) point is the same number
    weights, widths = discrete_point(net)
    assert float(model.ms(weights, widths).detach()) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("which", ["alpha", "mask"])
def test_latency_gradient_reaches_alpha_and_masks(latency_net, which):
    """Autograd against central differences of the soft expected latency (float64)."""
    net, model = latency_net
    param = next(iter(net.alphas.values())) if which == "alpha" else net.masks["s1"].logits

    def latency() -> torch.Tensor:
        return model.ms(*expected_point(net, surrogate_temperature=None))

    (grad,) = torch.autograd.grad(latency(), [param])
    assert grad.abs().max() > 0
    eps = 1e-6
    for i in range(param.numel()):
        with torch.no_grad():
            param.view(-1)[i] += eps
            up = float(latency())
            param.view(-1)[i] -= 2 * eps
            down = float(latency())
            param.view(-1)[i] += eps
        assert grad.view(-1)[i].item() == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-10)


def test_all_parts_at_once_equal_part_by_part_in_value_and_gradient(latency_net):
    """The batched interpolation against one table lookup per part: soft widths inside, at
    and beyond the grid's ends, a table with grids of different lengths (padded)."""
    net, _ = latency_net
    model = LatencyModel(net, net.latency_parts(), synthetic_table(net, grid_points=8))
    g = torch.Generator().manual_seed(3)
    for scale in (None, 0.3, 1.7):  # the estimator's own widths (one vector), and scaled ones
        with torch.no_grad():
            for p in net.arch_parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 2)
        weights, widths = expected_point(net)
        if scale is not None:  # below and beyond the full widths, as a dict
            widths = {k: w * scale for k, w in widths.items()}
        batched, reference = model.ms(weights, widths), model.ms_part_by_part(weights, widths)
        assert float(batched) == pytest.approx(float(reference), rel=1e-12)
        params = net.arch_parameters()
        for a, b in zip(torch.autograd.grad(batched, params, allow_unused=True, retain_graph=True),
                        torch.autograd.grad(reference, params, allow_unused=True)):
            assert (a is None) == (b is None)
            if a is not None:
                assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    assert len({len(g) for p in model.parts for g in model.table.entries[p.key].grid}) > 1


def test_penalty_pulls_latency_toward_its_target(latency_net):
    net, model = latency_net
    weights, widths = discrete_point(net)
    now = float(model.ms(weights, widths).detach())
    penalty = CostPenalty(net, {"latency_ms": 0.5 * now}, weight=1.0, latency=model)
    loss, _ = penalty(weights, widths)
    assert float(loss) == pytest.approx(torch.log(torch.tensor(2.0)).item() ** 2)
    grads = torch.autograd.grad(loss, net.arch_parameters(), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_unreachable_latency_targets_fail_with_the_reachable_range(latency_net):
    net, model = latency_net
    fastest, dense = model.fastest_ms(), model.dense_ms()
    assert fastest < dense
    with pytest.raises(UnreachableTargetError, match=f"fastest network .* {fastest:.4g} ms"):
        resolve_targets({"latency_ms": {"value": 0.9 * fastest}}, net, 1, model)
    with pytest.raises(UnreachableTargetError, match=f"above the dense network's {dense:.4g} ms"):
        resolve_targets({"latency_ms": {"value": 1.1 * dense}}, net, 1, model)
    t = resolve_targets({"latency_ms": {"fraction": 0.5}}, net, 1, model)
    assert t["latency_ms"] == pytest.approx(0.5 * dense) and "macs" not in t


def test_derivation_meets_a_latency_target(latency_net):
    net, model = latency_net
    target = 0.5 * (model.fastest_ms() + model.dense_ms())
    d = derive(net, budget("latency_ms", net, target, model), tolerance=0.03)
    assert abs(model.architecture_ms(d.arch) / target - 1) <= 0.03


def test_a_search_meets_a_latency_target_on_a_synthetic_table(tmp_path):
    """train.py's pipeline with a latency target and a given table: the search ends on the
    target (table latency of the network it derives), the derived network is within the
    derivation's tolerance, and the summary has the prediction and a measured figure."""
    # the table alone (a made-up one); two threads whatever the worker's: the discrete latencies
    # lie 6-12% apart, so where 6 epochs end depends on the float sums' order
    cfg = load_config(None, [*_digits_small(tmp_path), "search.targets={latency_ms: {fraction: 0.5}}",
                             "derive.latency_corrections=0", "threads=2"])
    net = MacroSupernet(cfg.space_config, 1, 10, 8)
    path = tmp_path / "table.json"
    torch.set_num_threads(2)  # the table records the thread count the run will use
    synthetic_table(net).save(path)
    cfg.latency.table = str(path)
    metrics = run(cfg, tmp_path / "run", stages=("search", "derive"), report=lambda _: None)
    lat = metrics["latency"]
    assert abs(lat["exported_predicted_ms"] / lat["target_ms"] - 1) <= cfg.derive.tolerance
    assert lat["target_ms"] == pytest.approx(0.5 * lat["dense_predicted_ms"])
    assert lat["exported_measured_ms"] > 0 and lat["dense_measured_ms"] > 0
    history = torch.load(tmp_path / "run" / "search.pt", weights_only=True)["history"]
    assert abs(history[-1]["discrete_latency_ms"] / lat["target_ms"] - 1) <= cfg.derive.tolerance
    # the run keeps the table its targets came from
    assert json.loads((tmp_path / "run" / "latency_table.json").read_text())["entries"]
    summary = json.loads((tmp_path / "run" / "summary-export.json").read_text())
    assert summary["latency"] == lat
    # TensorBoard: the table latency of every epoch against the target
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0}).Reload()
    logged = [e.value for e in events.Scalars("cost/discrete_latency_ms")]
    assert logged == pytest.approx([h["discrete_latency_ms"] for h in history])
    targets = [e.value for e in events.Scalars("cost/target_latency_ms")]
    assert targets == pytest.approx([lat["target_ms"]] * len(history))


def _digits_small(tmp_path) -> list[str]:
    from conftest import SMALL_RUN
    return [*SMALL_RUN, "search.epochs=6", "search.warmup_epochs=1", f"out_dir={tmp_path}"]


def test_a_table_of_another_space_or_device_is_refused(tmp_path, latency_net):
    net, _ = latency_net
    other = MacroSupernet(tiny_space(stem=8), in_channels=1, num_classes=10, input_size=8)
    path = tmp_path / "other.json"
    synthetic_table(other).save(path)
    kw = dict(device=torch.device("cpu"), runtime="torch", batch=1, channels_last=False,
              grid_points=3, repeats=1, rounds=1, cache_dir=tmp_path / "cache")
    with pytest.raises(LatencyTableError, match="was measured for parts"):
        obtain_table(net, explicit=str(path), **kw)
    table = synthetic_table(net)
    table.meta["device"] = "Some Phone CPU"
    table.save(path)
    with pytest.raises(LatencyTableError, match="device 'Some Phone CPU', this run needs device"):
        obtain_table(net, explicit=str(path), **kw)
    table = synthetic_table(net)
    table.meta["batch"] = 8
    table.save(path)
    with pytest.raises(LatencyTableError, match="batch 8, this run needs batch 1"):
        obtain_table(net, explicit=str(path), **kw)
    synthetic_table(net).save(path)
    assert obtain_table(net, explicit=str(path), **kw).table.meta["parts"] == table.meta["parts"]


def test_tables_are_measured_once_then_reused_from_the_cache(tmp_path, monkeypatch):
    net = MacroSupernet(tiny_space(stages=[tiny_space().stages[0]]), 1, 10, 8)
    kw = dict(device=torch.device("cpu"), runtime="torch", batch=1, channels_last=False,
              grid_points=2, repeats=2, rounds=2, cache_dir=tmp_path, report=lambda _: None)
    first = obtain_table(net, **kw).table
    for key, entry in first.entries.items():  # measured, positive, monotone
        values = entry.values()
        assert (values > 0).all() and torch.equal(monotone(values), values), key
        assert [len(g) for g in entry.grid] == list(values.shape)
    monkeypatch.setattr("maskednas.latency.cache.measure_table", lambda *a, **k: pytest.fail("measured again"))
    again = obtain_table(net, **kw).table
    assert again.entries.keys() == first.entries.keys() and again.meta == first.meta


def test_onnxruntime_tables_time_onnx_sessions():
    net = MacroSupernet(tiny_space(stages=[tiny_space().stages[0]]), 1, 10, 8)
    stem = net.latency_parts()[:1]
    table = measure_table("macro", stem, torch.device("cpu"), "onnxruntime", grid_points=2,
                          repeats=2, rounds=1)
    assert table.meta["runtime"] == "onnxruntime" and table.meta["channels_last"] is None
    assert (table.entries["stem"].values() > 0).all()


def test_a_target_override_adds_to_the_files_targets_and_never_drops_one():
    """An override of one target adds it to the file's (digits: MACs at 40%); naming the whole
    mapping replaces them, and null drops one."""
    cfg = load_config("configs/digits.yaml", ["search.targets.latency_ms.value=0.5"])
    assert cfg.search.targets["latency_ms"].value == 0.5
    assert cfg.search.targets["macs"].fraction == 0.4  # the file's target still applies
    cfg = load_config(None, ["search.targets.latency_ms.value=0.5"])  # no file: the defaults stay
    assert cfg.search.targets["macs"].fraction == 0.5 and cfg.search.targets["latency_ms"].value == 0.5
    cfg = load_config("configs/digits.yaml", ["search.targets={latency_ms: {value: 0.5}}"])
    assert list(cfg.search.targets) == ["latency_ms"]
    cfg = load_config("configs/digits.yaml", ["search.targets.latency_ms.value=0.5",
                                              "search.targets.macs=null"])
    assert search_goals(cfg).keys() == {"latency_ms"}
    cfg = load_config("configs/digits.yaml", ["seed=3"])
    assert cfg.search.targets["macs"].fraction == 0.4  # untouched without a target override


def test_the_old_target_keys_are_refused_with_the_new_form():
    with pytest.raises(ConfigError, match=r"'search.target.latency_ms' is now "
                                          r"'search.targets.latency_ms.value' \(write "
                                          r"search.targets.latency_ms.value=0.5"):
        load_config("configs/digits.yaml", ["search.target.latency_ms=0.5"])
    with pytest.raises(ConfigError, match="'derive.macs' is now 'derive.target.macs'"):
        load_config("configs/digits.yaml", ["derive.macs=1000"])


def test_spaces_without_a_latency_model_refuse_latency_targets():
    with pytest.raises(ConfigError, match="'darts' space has no latency model"):
        load_config("configs/darts_digits.yaml", ["search.targets={latency_ms: {value: 1}}"])


def test_a_resumed_search_reads_the_table_its_run_kept(tmp_path, monkeypatch):
    """The targets of a resumed run come from the run's own copy of its table, whatever the
    cache holds by then: nothing is measured again."""
    from maskednas.pipeline.setup import prepare_search

    cfg = load_config(None, [*_digits_small(tmp_path), "search.epochs=2",
                             "search.targets={latency_ms: {fraction: 0.5}}"])
    path = tmp_path / "table.json"
    synthetic_table(MacroSupernet(cfg.space_config, 1, 10, 8)).save(path)
    cfg.latency.table = str(path)
    first = prepare_search(cfg, tmp_path / "run")
    first.run()
    path.unlink()  # the named table is gone; the run's copy remains
    monkeypatch.setattr("maskednas.latency.cache.measure_table", lambda *a, **k: pytest.fail("measured again"))
    resumed = prepare_search(load_config(None, [*_digits_small(tmp_path), "search.epochs=3",
                                                "search.targets={latency_ms: {fraction: 0.5}}"]),
                             tmp_path / "run")
    resumed.resume()
    assert resumed.targets == first.targets and resumed.epoch == 2
    resumed.run()
    assert "discrete_latency_ms" in resumed.history[-1]


@pytest.mark.parametrize("logit", [5.0, -5.0], ids=["full-width", "minimum-width"])
def test_every_used_mask_gets_a_latency_gradient_at_the_ends_of_the_grid(logit):
    """A fresh supernet keeps every channel (the table's last grid point) and a pruned-out group
    sits at its first: the latency penalty must still reach every mask the network uses."""
    torch.manual_seed(0)
    net = MacroSupernet(tiny_space(), in_channels=1, num_classes=10, input_size=8).double()
    with torch.no_grad():
        for mask in net.masks.values():
            mask.logits.fill_(logit)
    model = LatencyModel(net, net.latency_parts(), synthetic_table(net))
    penalty = CostPenalty(net, {"latency_ms": 0.5 * model.dense_ms()}, weight=1.0, latency=model)
    loss, _ = penalty(*discrete_point(net))
    used = net.used_groups(net.derive_ops())
    grads = torch.autograd.grad(loss, [net.masks[g].logits for g in used], allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads), \
        [g for g, d in zip(used, grads) if d is None or d.abs().sum() == 0]
