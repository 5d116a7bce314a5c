"""The cost penalty is a handful of tensor ops, not a Python walk over every layer: each space's
cost is a compiled polynomial equal to its layer-by-layer formula, the latency table is
interpolated for all parts at once, and a step's penalty dispatches fewer aten ops than the
network's forward pass (benchmarks/cost_ops.py prints the counts)."""
from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.cost_ops import count
from maskednas.supernet.cost_model import discrete_point, expected_point
from maskednas.supernet.user_model import ModelSpaceConfig, UserModel

RESNET20 = ("prune_model", ["model.source=benchmarks.cifar_resnet:resnet20"], 3, 16, {"macs": 0.5})


@pytest.mark.parametrize("space", [("digits", [], 1, 8, {"macs": 0.5}),
                                   ("digits", [], 1, 8, {"latency_ms": 0.5}), RESNET20],
                         ids=["macro-macs", "macro-latency", "resnet20-macs"])
def test_the_penalty_dispatches_fewer_ops_than_the_forward_pass(space):
    r = count(*space)
    assert r["cost_ops"] <= r["network_forward_ops"], r


def _random_point(net, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 2)
    return expected_point(net, surrogate_temperature=1.0), discrete_point(net)


def test_the_compiled_cost_equals_the_layer_by_layer_formula(tiny_net):
    user = UserModel(ModelSpaceConfig(source="benchmarks.cifar_resnet:resnet20"), 3, 10, 16)
    for net in (tiny_net, user):
        for seed in range(3):
            for weights, widths in _random_point(net, seed):
                compiled, formula = net.cost(weights, widths), net.cost_formula(weights, widths)
                params = list(net.arch_parameters())
                for a, b in ((compiled.macs, formula.macs), (compiled.params, formula.params)):
                    assert float(a) == pytest.approx(float(b), rel=1e-6)
                    ga = torch.autograd.grad(a, params, retain_graph=True, allow_unused=True)
                    gb = torch.autograd.grad(b, params, retain_graph=True, allow_unused=True)
                    for x, y in zip(ga, gb):
                        assert (x is None) == (y is None)
                        if x is not None:
                            assert torch.allclose(x.double(), y.double(), rtol=1e-4, atol=1e-6 * float(b))


class _Names(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_each_distinct_gate_vector_is_gathered_once_per_forward_from_device_buffers():
    """ResNet-20's convs read few distinct channel spaces (every conv of a stage reads its
    stream): one gather each per forward, from index buffers that move with the model."""
    net = UserModel(ModelSpaceConfig(source="benchmarks.cifar_resnet:resnet20"), 3, 10, 16)
    x = torch.randn(2, 3, 16, 16)
    with _Names() as names:
        net(x)
    distinct = len(list(net.gate_index.buffers()))
    readers = sum(1 for n in net.groups.inputs if n in dict(net.model.named_modules()))
    assert distinct < readers
    assert names.ops["index.Tensor"] == distinct and names.ops["index_copy.default"] == 0
    assert all(b.is_meta for b in net.to("meta").gate_index.buffers())


def test_a_cost_formula_that_branches_on_a_width_is_refused():
    from maskednas.ops import Cost
    from maskednas.ops.cost_polynomial import CostPolynomial

    with pytest.raises(TypeError, match="branched on a width"):
        CostPolynomial(lambda w, c: Cost(c["a"] if c["a"] > 2 else 0, 0), {"a": 4}, {})
    cost = CostPolynomial(lambda w, c: Cost(c["a"] * w["x"][0] * 3, c["a"]), {"a": 4}, {"x": 2})
    assert float(cost({"x": torch.tensor([0.5, 0.5])}, {"a": 4}).macs) == 6.0
    with pytest.raises(ValueError, match="op weights per choice"):
        cost({"x": torch.tensor([0.5, 0.25, 0.25])}, {"a": 4})
