"""A third search space, defined here and nowhere else, through the declared protocol only:
search -> derive -> slim -> export -> load, with the invariants the shipped spaces have."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from maskednas.datasource import DeviceLoader, load_dataset
from maskednas.derive import derive, slim
from maskednas.export import Architecture, LayerChoice, load, read_metrics
from maskednas.export.flops import fvcore_report
from maskednas.ops import ChannelMask, Cost, Head, MixedOp, Stem, apply_gate, get_op
from maskednas.pipeline import load_config, run
from maskednas.supernet import SPACES, Supernet, dense_cost, expected_cost, register_space
from maskednas.training.finetune import evaluate

CANDIDATES = ("conv_3x3", "zero")


@dataclass
class ChainConfig:
    channels: int = 8
    layers: int = 3
    stem_channels: int = 6

    def validate(self) -> None:
        if min(self.channels, self.layers, self.stem_channels) < 1:
            raise ValueError("chain: every size must be >= 1")


class ChainSupernet(Supernet):
    """Stem, then `layers` plain layers that each choose conv_3x3 or zero, with one mask per layer."""

    def __init__(self, space: ChainConfig, in_channels: int, num_classes: int, input_size: int):
        super().__init__(space, in_channels, num_classes, input_size)
        self.stem = Stem(in_channels, space.stem_channels)
        self.names = [f"l{i}" for i in range(space.layers)]
        c_in, self.layers = space.stem_channels, nn.ModuleList()
        for name in self.names:
            self.layers.append(MixedOp(CANDIDATES, c_in, space.channels, 1, tied=False))
            self.masks[name] = ChannelMask(space.channels)
            self.alphas[name] = nn.Parameter(torch.zeros(len(CANDIDATES)))
            c_in = space.channels
        self.head = Head(space.channels, num_classes)
        self.restricted: dict[str, str] | None = None

    def _in(self, i: int, widths) -> int:
        return self.space.stem_channels if i == 0 else widths[self.names[i - 1]]

    def op_weights(self, temperature=None):
        if self.restricted is not None:
            return {n: torch.tensor([float(op == self.restricted[n]) for op in CANDIDATES])
                    for n in self.names}
        t = self.temperature if temperature is None else temperature
        return {n: torch.softmax(self.alphas[n] / t, 0) for n in self.names}

    def select(self, weights):
        return {n: nn.functional.one_hot(w.argmax(), len(w)).to(w.dtype) for n, w in weights.items()}

    def derive_ops(self, weights=None):
        weights = self.alphas if weights is None else weights
        return {n: CANDIDATES[int(weights[n].argmax())] for n in self.names}

    def used_groups(self, ops):
        return list(self.names)

    def choice_rows(self, weights):
        return {n: (CANDIDATES, weights[n]) for n in self.names}

    def describe(self) -> str:
        return ", ".join(f"{n}: {op}" for n, op in self.derive_ops().items())

    def _op_costs(self, i: int, widths) -> list[Cost]:
        s = self.input_size
        return [get_op(op).cost(self._in(i, widths), widths[self.names[i]], 1, s, s, tied=False)
                for op in CANDIDATES]

    def cost(self, weights, widths) -> Cost:
        s = self.input_size
        total = Stem.cost(self.in_channels, self.space.stem_channels, s, s)
        for i, n in enumerate(self.names):
            for w, c in zip(weights[n], self._op_costs(i, widths)):
                total = total + c * w
        return total + Head.cost(widths[self.names[-1]], self.num_classes, s, s)

    def op_scores(self, widths):
        return {n: torch.tensor([float(c.macs) for c in self._op_costs(i, widths)])
                for i, n in enumerate(self.names)}

    def architecture(self, ops, widths, mean=(), std=()) -> Architecture:
        layers = tuple(LayerChoice(ops[n], self._in(i, widths), widths[n], 1, False,
                                   kernel=get_op(ops[n]).kernel) for i, n in enumerate(self.names))
        return Architecture(self.in_channels, self.input_size, self.num_classes,
                            self.space.stem_channels, layers, tuple(mean), tuple(std),
                            space=self.space_name)

    def copy_plan(self, model, arch, keep):
        plan = [(self.stem, model.stem, {})]
        for i, (n, layer, choice) in enumerate(zip(self.names, self.layers, arch.layers)):
            plan.append((layer.candidates[choice.op], model.layers[i].op,
                         {"in": keep[self.names[i - 1]] if i else None, "out": keep[n]}))
        return plan + [(self.head, model.head, {"in": keep[self.names[-1]]})]

    def restrict_ops(self, ops) -> None:
        self.restricted = ops
        for n, layer in zip(self.names, self.layers):
            layer.restrict(None if ops is None else CANDIDATES.index(ops[n]))

    def forward(self, x):
        gates, weights = self.gates(), self.op_weights()
        x = self.stem(x)
        for n, layer in zip(self.names, self.layers):
            x = apply_gate(layer(x, weights[n].to(x.device), [None, None]), gates[n])
        return self.head(x)


@pytest.fixture
def chain_space():
    register_space("chain", ChainConfig)(ChainSupernet)
    yield
    SPACES._obj_map.pop("chain")  # leave the registry as the other tests know it


def randomized_chain() -> ChainSupernet:
    torch.manual_seed(0)
    net = ChainSupernet(ChainConfig(), in_channels=1, num_classes=10, input_size=8)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():  # weights, BN affine, alpha (conv_3x3 wins) and mask logits
            p.copy_(torch.randn(p.shape, generator=g))
        for n in net.names:
            net.alphas[n].copy_(torch.tensor([2.0, 0.0]))
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net.eval()


def test_toy_space_slims_to_the_hard_masked_supernet_with_exact_costs(chain_space):
    net = randomized_chain()
    d = derive(net, 0.5 * float(dense_cost(net).macs))
    assert all(len(d.keep[n]) < net.masks[n].channels for n in net.names)  # really pruned
    model = slim(net, d).eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad(), net.hard_masked(d.ops, d.keep):
        expected, hard_cost = net(x), expected_cost(net)
    with torch.no_grad():  # random weights without normalisation: outputs reach ~1e2
        scale = float(expected.abs().max())
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-6 * scale)
    flops, params, _ = fvcore_report(model, x[:1])
    assert d.arch.cost() == Cost(flops, params) == Cost(float(hard_cost.macs), float(hard_cost.params))
    assert abs(flops / (0.5 * float(dense_cost(net).macs)) - 1) <= 0.03


def test_toy_space_runs_the_whole_pipeline_from_its_config_section(chain_space, tmp_path):
    cfg = load_config(None, ["space=chain", "chain.layers=2", "chain.channels=12",
                             "search.epochs=3", "search.warmup_epochs=1", "finetune.epochs=1",
                             "data.batch_size=128", "search.targets.macs.fraction=0.6"])
    assert isinstance(cfg.space_config, ChainConfig) and cfg.space_config.channels == 12
    metrics = run(cfg, tmp_path / "run", report=lambda _: None)
    folder = tmp_path / "run" / "export"
    model = load(folder)  # analytic MACs == fvcore was asserted by the export stage
    assert metrics["fvcore_flops"] == model.arch.cost().macs and metrics["slim_max_abs_diff"] < 1e-5
    assert model.arch.space == "chain" and len(model.arch.layers) == 2
    stats = read_metrics(folder)["data"]
    data = load_dataset("digits")
    test = DeviceLoader(data.x_test, data.y_test, 64, stats["mean"], stats["std"], shuffle=False,
                        drop_last=False)
    assert evaluate(model, test)["acc"] == metrics["test_acc"]
