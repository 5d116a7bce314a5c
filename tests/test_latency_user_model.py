"""Latency targets for a user's network (the `model` space): every conv, linear and norm layer
is a table part read at its own channel counts, the table's scale ties the parts to the whole
network, and a search meets a latency target (on a made-up table: no timing in the assertions,
except where the test says so)."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
from torch import nn
from torchvision.models.convnext import LayerNorm2d

from conftest import small_config, synthetic_table
from maskednas.derive.discretize import budget, derive
from maskednas.latency import LatencyModel, LatencyTableError, measure_table
from maskednas.latency.cache import obtain_table
from maskednas.latency.calibrate import calibrate
from maskednas.latency.layer_parts import channel_dim, resized_layer, timed_alone
from maskednas.pipeline import run
from maskednas.supernet.user_model import ModelSpaceConfig, UserModel


class Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.body(x))


class Branches(nn.Module):
    """Two convs concatenated: the 1x1 conv after them reads two channel groups."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(c, 6, 1), nn.Conv2d(c, 10, 3, padding=1)
        self.mix = nn.Sequential(nn.ReLU(), nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24), nn.ReLU())

    def forward(self, x):
        return self.mix(torch.cat([self.a(x), self.b(x)], 1))


def small_net(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                         Residual(12), Residual(12),
                         nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.ReLU(),  # depthwise
                         Branches(12), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(24, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, num_classes))


def small_model() -> UserModel:
    torch.manual_seed(0)
    return UserModel(ModelSpaceConfig(source=f"{__name__}:small_net"), 1, 10, 8)


def bilinear_ms(part, widths) -> float:
    """A made-up latency each table reproduces exactly between its grid points (multilinear in
    the widths), so the prediction of any pruned network is known in closed form."""
    return 0.01 + 1e-3 * sum(widths) + 1e-4 * float(torch.tensor(widths, dtype=torch.float64).prod())


def random_widths(net: UserModel, generator: torch.Generator) -> dict[str, int]:
    return {g: int(torch.randint(1, size + 1, (1,), generator=generator))
            for g, size in net.full_widths().items()}


def test_the_parts_are_the_layers_the_forward_runs_read_at_their_own_channel_counts():
    net = small_model()
    parts, layers = net.latency_parts(), net.layer_widths(net.full_widths())
    assert [p.groups[0].split("|")[0] for p in parts] == [w.name for w in layers if timed_alone(w.module)]
    assert len({p.key for p in parts}) < len(parts)  # the residual blocks' convs share entries
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        widths = random_widths(net, generator)
        axes = net.latency_axes(widths)
        for w in net.layer_widths(widths):
            if timed_alone(w.module):
                sides = [w.c_out] if w.rule.same_channels else [w.c_in, w.c_out]
                names = [f"{w.name}|c"] if w.rule.same_channels else [f"{w.name}|in", f"{w.name}|out"]
                assert [float(axes[n]) for n in names] == [float(s) for s in sides], w.name
    # the concatenation's reader: both branches' widths
    widths = {**net.full_widths(), **random_widths(net, generator)}
    mix_in = float(net.latency_axes(widths)["7.mix.1|in"])
    assert mix_in == widths[net.groups.outputs["7.a"].slices[0].group] + widths[
        net.groups.outputs["7.b"].slices[0].group]


def test_a_multilinear_table_gives_the_exact_latency_of_every_pruned_network():
    """Table latency of a derived network = the sum over its layers (those of skipped blocks
    left out) of the made-up latency at their channel counts, times the table's scale; the
    search's differentiable latency equals it at one-hot weights and integer widths."""
    net = small_model()
    table = synthetic_table(net, ms=bilinear_ms, grid_points=3)
    table.meta["scale"] = 1.25  # no calibration points: the scale alone
    model = LatencyModel(net, net.latency_parts(), table)
    generator = torch.Generator().manual_seed(2)
    for skipped in itertools.product(["keep", "skip"], repeat=len(net.blocks)):
        ops = dict(zip(net.blocks, skipped))
        widths = random_widths(net, generator)
        arch = net.architecture(ops, widths)
        expected = 0.0
        for part, w in zip(net.latency_parts(), (w for w in net.layer_widths(widths) if timed_alone(w.module))):
            if net._block(w.name) in arch.removed:
                continue
            expected += bilinear_ms(part, [w.c_out] if w.rule.same_channels else [w.c_in, w.c_out])
        expected *= 1.25
        assert model.architecture_ms(arch) == pytest.approx(expected, rel=1e-12)
        soft = model.ms(net.one_hot(ops), {k: torch.tensor(float(v)) for k, v in widths.items()})
        assert float(soft) == pytest.approx(expected, rel=1e-12)
    assert model.dense_ms() == pytest.approx(model.architecture_ms(net.dense_architecture()))


def test_the_latency_gradient_reaches_every_mask_and_keep_weight_alike_batched_and_part_by_part():
    net = small_model()
    model = LatencyModel(net, net.latency_parts(), synthetic_table(net, ms=bilinear_ms))
    grads = []
    for ms in (model.ms, model.ms_part_by_part):
        weights = {k: v.detach().clone().requires_grad_() for k, v in net.op_weights().items()}
        widths = {k: torch.tensor(0.7 * v, dtype=torch.float64, requires_grad=True)
                  for k, v in net.full_widths().items()}
        value = ms(weights, widths)
        value.backward()
        grads.append((float(value.detach()), {k: float(v.grad) for k, v in widths.items()},
                      {k: tuple(v.grad.tolist()) for k, v in weights.items()}))
    (v1, w1, o1), (v2, w2, o2) = grads
    assert v1 == pytest.approx(v2, rel=1e-12)
    assert w1 == pytest.approx(w2, rel=1e-9)
    assert all(o1[k] == pytest.approx(o2[k], rel=1e-6) for k in o1)  # float32 op weights
    assert all(g > 0 for g in w1.values())  # every group is read by a timed layer
    assert all(g[0] > 0 and g[1] == 0 for g in o1.values())  # a kept block costs, a skipped one not


def test_a_measured_table_times_each_distinct_layer_once_on_the_rounded_grid():
    """Timed here (one round, few repeats): positive, one entry per distinct layer, the inner
    grid points multiples of the step, and the calibration networks at its widths."""
    net = small_model()
    parts = net.latency_parts()
    table = measure_table("model", parts, torch.device("cpu"), grid_points=3, repeats=3, rounds=1, grid_step=4)
    assert len(table.entries) == len({p.key for p in parts}) < len(parts)
    for entry in table.entries.values():
        assert (entry.values() > 0).all()
        assert all(w % 4 == 0 for axis in entry.grid for w in axis[:-1] if axis[-1] > 4), entry.grid
    calibrate(table, net, parts, torch.device("cpu"), "torch", 1, False, rounds=1)
    assert table.meta["calibration"]["dense"]["measured_ms"] > 0 and table.meta["scale"] > 0
    for name in ("half", "quarter"):
        widths = net.latency_calibration(4)[name][1].widths
        assert all(w % 4 == 0 or w == net.full_widths()[g] for g, w in widths.items()), (name, widths)


@pytest.mark.parametrize("measured, kept", [((3.0, 1.2, 0.8), "dhq"), ((3.0, 0.9, 0.2), "dhq"), ((3.0, 2.9, 2.8), "dhq"),
                                            ((3.0, 1.2, 1.3), "dh"), ((3.0, 3.5, 0.2), "dq"), ((3.0, 3.5, 3.6), "d")],
                         ids=["convex", "concave", "fixed-cost", "quarter-noisy", "half-noisy", "no-fit"])
def test_calibration_predicts_the_networks_it_timed_grows_with_width_and_never_reaches_zero(monkeypatch, measured, kept):
    """The dense, half and quarter networks timed whole (stubbed: the arithmetic is tested) are
    predicted at their measured time; one timed no faster than a wider one is dropped (then
    predicted by the others); below the smallest kept one, the extended segment gives way to
    the line through it and zero; the search's latency equals the derivation's."""
    net = small_model()
    parts = net.latency_parts()
    table = synthetic_table(net, ms=bilinear_ms)
    names = ["dense", "half", "quarter"]
    monkeypatch.setattr("maskednas.latency.calibrate.models_ms", lambda models, *a, **k: dict(zip(names, measured)))
    calibrate(table, net, parts, torch.device("cpu"), "torch", 1, False)
    model, networks = LatencyModel(net, parts, table), net.latency_calibration()
    predicted = [model.architecture_ms(networks[n][1]) for n in names]
    assert len(table.meta["calibration_points"]) == len(kept)
    assert predicted[0] > predicted[1] > predicted[2] > 0
    for i, name in enumerate(names):  # each kept one at its measured time
        assert (predicted[i] == pytest.approx(measured[i], rel=1e-12)) == (name[0] in kept)
    parts_ms = [table.meta["calibration"][n]["parts_ms"] for n in names]
    midway = model._calibrated(torch.tensor((parts_ms[0] + parts_ms[1]) / 2, dtype=torch.float64))
    assert float(midway) == pytest.approx((predicted[0] + predicted[1]) / 2, rel=1e-12)
    smallest = net.architecture({b: "skip" for b in net.blocks}, net.smallest_widths())
    tiny = model.architecture_ms(smallest)
    assert 0 < tiny < predicted[2]
    weights = net.one_hot({b: "skip" for b in net.blocks})
    soft = model.ms(weights, {k: torch.tensor(float(v)) for k, v in net.smallest_widths().items()})
    assert float(soft) == pytest.approx(tiny, rel=1e-12)


def test_without_calibration_networks_a_table_is_left_as_measured():
    class Plain:
        def latency_calibration(self, round_to=1):
            return {}
    table = synthetic_table(small_model())
    before = dict(table.meta)
    calibrate(table, Plain(), [], torch.device("cpu"), "torch", 1, False)
    assert table.meta == before


@pytest.mark.parametrize("layer, c_in, c_out, shape, reads", [
    (nn.Conv2d(8, 12, 3, padding=1), 5, 7, (1, 8, 6, 6), "zeros"),
    (nn.Conv2d(8, 8, 3, padding=1, groups=8), 3, 3, (1, 8, 6, 6), "own channels"),
    (nn.Conv2d(8, 8, 3, padding=1, groups=4), 4, 4, (1, 8, 6, 6), "own channels"),
    (nn.Linear(8, 12), 5, 7, (1, 3, 8), "zeros"),
    (nn.BatchNorm2d(8), 5, 5, (1, 8, 6, 6), "own channels"),
    (nn.LayerNorm(8), 5, 5, (1, 3, 8), None),
    (nn.GroupNorm(2, 8), 4, 4, (1, 8, 6, 6), None),
    (LayerNorm2d(8), 5, 5, (1, 8, 6, 6), None),
], ids=["conv", "depthwise", "grouped", "linear", "batchnorm", "layernorm", "groupnorm", "layernorm2d"])
def test_a_resized_layer_is_the_full_one_on_its_first_channels(layer, c_in, c_out, shape, reads):
    """What a pruned layer computes: the full layer's first outputs, given inputs that are zero
    beyond the kept ones (layers mixing channels) or whatever they are (layers that read each
    channel or group on its own); norms over channels keep their first affine parameters."""
    torch.manual_seed(0)
    layer.eval()
    for p in layer.parameters():
        nn.init.normal_(p)
    if isinstance(layer, nn.BatchNorm2d):
        layer.running_mean.normal_(), layer.running_var.uniform_(0.5, 2)
    dim = channel_dim(layer, shape, 8)
    assert dim == (1 if len(shape) == 4 else 2)
    x = torch.randn(shape)
    if reads == "zeros":
        x.narrow(dim, c_in, shape[dim] - c_in).zero_()
    small = resized_layer(layer, c_in, c_out)
    out = small(x.narrow(dim, 0, c_in))
    assert out.shape[dim] == c_out
    if reads is not None:
        assert torch.allclose(out, layer(x).narrow(dim, 0, c_out), atol=1e-5)
    if layer.weight.dim() == 1:  # norms: their first affine parameters
        assert torch.equal(small.weight, layer.weight[:c_out]) and torch.equal(small.bias, layer.bias[:c_out])
    elif layer.groups == 1 if isinstance(layer, nn.Conv2d) else True:
        assert torch.equal(small.weight, layer.weight[:c_out, :c_in])
    else:  # a grouped or depthwise conv: its first whole groups
        assert torch.equal(small.weight, layer.weight[:c_out]) and small.groups == c_out // (8 // layer.groups)


def test_a_table_of_another_network_is_refused(tmp_path):
    net = small_model()
    other = UserModel(ModelSpaceConfig(source="test_grouped_conv:two_grouped_net"), 1, 10, 8)
    path = tmp_path / "other.json"
    synthetic_table(other).save(path)
    with pytest.raises(LatencyTableError, match="was measured for parts"):
        obtain_table(net, torch.device("cpu"), "torch", 1, False, 3, 1, 1, tmp_path / "cache",
                     explicit=str(path))


def test_derivation_meets_a_latency_target_on_a_user_network():
    net = small_model()
    for mask in net.masks.values():  # a searched network's channel ranking
        mask.logits.data.normal_()
    model = LatencyModel(net, net.latency_parts(), synthetic_table(net, ms=bilinear_ms))
    for fraction in (0.5, 0.33):
        target = fraction * model.dense_ms()
        d = derive(net, budget("latency_ms", net, target, model), tolerance=0.03)
        assert abs(model.architecture_ms(d.arch) / target - 1) <= 0.03


def test_a_search_of_a_user_network_ends_on_its_latency_target(tmp_path):
    """The command's pipeline with a latency target on a user's network and a given table:
    the derived network is on target, and the summary has the measured latency beside it."""
    cfg = small_config(tmp_path, "space=model", f"model.source={__name__}:small_net",
                       "search.targets={latency_ms: {fraction: 0.5}}", "derive.round_to=1",  # 6-32 channels
                       "derive.latency_corrections=0")  # the table alone (a made-up one)
    net = UserModel(cfg.space_config, 1, 10, 8)
    path = tmp_path / "table.json"
    synthetic_table(net, ms=bilinear_ms).save(path)
    cfg.latency.table = str(path)
    metrics = run(cfg, tmp_path / "run", stages=("search", "derive"), report=lambda _: None)
    lat = metrics["latency"]
    assert abs(lat["exported_predicted_ms"] / lat["target_ms"] - 1) <= cfg.derive.tolerance
    assert lat["target_ms"] == pytest.approx(0.5 * lat["dense_predicted_ms"])
    assert lat["exported_measured_ms"] > 0 and lat["dense_measured_ms"] > 0
    assert lat["prediction_error_ms"] == pytest.approx(lat["exported_measured_ms"] - lat["exported_predicted_ms"])
    assert lat["aimed_by_measurement"] is None
    assert json.loads((tmp_path / "run" / "latency_table.json").read_text())["entries"]


def parameter_ms(models, *args, **kwargs):
    """A stand-in for timing: each model's parameter count, which a made-up table misjudges."""
    return {name: float(sum(p.numel() for p in m.parameters())) for name, m in models.items()}


def test_a_latency_target_is_aimed_by_what_the_derived_network_measures(tmp_path, monkeypatch):
    """With the table off (a made-up one; 'timing' stubbed by parameter counts), derivation is
    aimed again until the network measures the target's fraction of the dense one; the exported
    network is the one that measured so, and metrics.json records every try."""
    monkeypatch.setattr("maskednas.pipeline.stages.models_ms", parameter_ms)
    cfg = small_config(tmp_path, "space=model", f"model.source={__name__}:small_net",
                       "search.targets={latency_ms: {fraction: 0.5}}", "derive.round_to=1")
    net = UserModel(cfg.space_config, 1, 10, 8)
    path = tmp_path / "table.json"
    synthetic_table(net, ms=bilinear_ms).save(path)
    cfg.latency.table = str(path)
    lat = run(cfg, tmp_path / "run", stages=("search", "derive"), report=lambda _: None)["latency"]
    aimed = lat["aimed_by_measurement"]
    measured = lat["exported_measured_ms"] / lat["dense_measured_ms"]
    assert measured == pytest.approx(aimed["measured_fraction"], rel=1e-12)  # the kept one exported
    assert 1 <= len(aimed["tries"]) <= 1 + cfg.derive.latency_corrections
    first = aimed["tries"][0]
    assert first["aim_ms"] == pytest.approx(lat["target_ms"])
    miss, first_miss = abs(measured / 0.5 - 1), abs(first["measured_fraction"] / 0.5 - 1)
    assert first_miss > 0.05 and len(aimed["tries"]) > 1  # the made-up table is off: aimed again
    assert miss < first_miss / 2  # and the aim halved the miss at least


def test_aiming_by_measurement_rescales_the_aim_keeps_the_closest_and_stops_on_target():
    from maskednas.latency.aim import aim_by_measurement
    # a runtime 30% slower than the table on every network, proportionally: one correction
    aimed = aim_by_measurement(lambda ms: ms, lambda d: 1.3 * d / 10.0, 5.0, 10.0, corrections=2)
    assert [t["aim_ms"] for t in aimed.tries] == pytest.approx([5.0, 5.0 / 1.3])
    assert aimed.measured_fraction == pytest.approx(0.5) and aimed.derivation == pytest.approx(5.0 / 1.3)
    # on target at once: no correction; corrections=0: the table alone, however far off
    assert len(aim_by_measurement(lambda ms: ms, lambda d: 1.04 * d / 10, 5.0, 10.0, 2).tries) == 1
    assert len(aim_by_measurement(lambda ms: ms, lambda d: 2 * d / 10, 5.0, 10.0, 0).tries) == 1
    # noise: the closest try is kept, not the last
    noisy = iter([0.6, 0.7, 0.65])
    aimed = aim_by_measurement(lambda ms: ms, lambda d: next(noisy), 5.0, 10.0, 2)
    assert len(aimed.tries) == 3 and aimed.measured_fraction == 0.6 and aimed.aim_ms == 5.0
    # an overshoot brackets the target: the next aim is between the two tries, on their line
    steep = {5.0: 0.2, 10.0: 1.0}
    aimed = aim_by_measurement(lambda ms: ms, lambda d: steep.get(d, 0.5), 5.0, 10.0, 2)
    assert [t["aim_ms"] for t in aimed.tries] == pytest.approx([5.0, 10.0, 5.0 + 5.0 * 0.3 / 0.8])
    assert aimed.measured_fraction == 0.5
    # a network measuring far faster than the table: never aimed above the dense one, nor twice
    aimed = aim_by_measurement(lambda ms: ms, lambda d: 0.1 * d / 10, 5.0, 10.0, 3)
    assert [t["aim_ms"] for t in aimed.tries] == [5.0, 10.0]


def test_grids_step_in_the_widths_derivation_rounds_to():
    from maskednas.latency.table import grid_widths
    assert grid_widths(32, 4) == [1, 11, 22, 32]
    assert grid_widths(32, 4, 8) == [8, 16, 24, 32]
    assert grid_widths(96, 4, 8) == [8, 40, 64, 96]
    assert grid_widths(12, 4, 8) == [8, 12]  # a group narrower than two steps: the step and full
    assert grid_widths(6, 4, 8) == [1, 3, 4, 6]  # narrower than the step: plain
    for size in range(9, 200, 7):
        grid = grid_widths(size, 4, 8)
        assert grid[0] == 8 and grid[-1] == size and all(w % 8 == 0 for w in grid[:-1]), (size, grid)


def test_a_latency_target_on_a_users_network_rounds_widths_as_its_runtime_runs_fast_unless_told_otherwise():
    from maskednas.latency import ROUND_TO
    from maskednas.pipeline import load_config
    latency = "search.targets.latency_ms.fraction=0.5"
    assert load_config("prune_model").derive.round_to == 1  # no latency target: no rounding
    assert load_config("prune_model", ["latency.runtime=onnxruntime"]).derive.round_to == 1
    assert load_config("prune_model", [latency]).derive.round_to == ROUND_TO["torch"] == 8
    assert load_config("prune_model", [latency, "latency.runtime=onnxruntime"]).derive.round_to == ROUND_TO["onnxruntime"] == 8
    assert load_config("prune_model", [latency, "derive.round_to=1"]).derive.round_to == 1
    assert load_config("prune_model", ["derive.round_to=4"]).derive.round_to == 4
    assert load_config("digits", [latency]).derive.round_to == 1  # the macro space: as it was measured


def test_a_table_for_another_rounding_is_cached_apart(tmp_path, monkeypatch):
    """The table's grid follows derive.round_to (its widths are multiples of it), and a table
    of another grid step is measured, not read, from the cache."""
    net = small_model()
    measured = []

    def fake(space, parts, device, runtime, batch, channels_last, grid_points, repeats, rounds, grid_step):
        measured.append(grid_step)
        table = synthetic_table(net, grid_points=grid_points)
        table.meta["grid_step"] = grid_step
        return table

    monkeypatch.setattr("maskednas.latency.cache.measure_table", fake)
    monkeypatch.setattr("maskednas.latency.cache.calibrate", lambda *a, **k: None)
    kw = dict(device=torch.device("cpu"), runtime="torch", batch=1, channels_last=False, grid_points=3,
              repeats=1, rounds=1, cache_dir=tmp_path, report=lambda _: None)
    for step in (1, 8, 1, 8):
        obtain_table(net, grid_step=step, **kw)
    assert measured == [1, 8]
    assert len(list(tmp_path.glob("*.json"))) == 2
