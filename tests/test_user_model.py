"""The `model` space: pruning networks users already have (torchvision, timm, their own)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.cifar_resnet import resnet20
from benchmarks.support_matrix import MODELS, check, exact_cost
from maskednas.export.model_source import ModelSourceError, build_source, drop_auxiliary_heads
from maskednas.pipeline.config import ConfigError, load_config
from maskednas.supernet.channel_groups import ChannelGraphError
from maskednas.supernet.model_trace import _reshapes_channels
from maskednas.supernet.user_model import ModelSpaceConfig, UserModel

RESNET20 = "benchmarks.cifar_resnet:resnet20"


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """Every model of the support matrix checked once, exported under one folder. Subnormal
    floats as a fresh process computes them (runs flush them to zero, see pipeline.setup), so the
    fresh process's outputs can be compared bit for bit."""
    torch.set_flush_denormal(False)
    root = tmp_path_factory.mktemp("matrix")
    results = {}
    for i, (source, size) in enumerate(MODELS.items()):
        r = check(source, size, export_to=root / f"m{i}")
        save_file({"input": r["input"], "output": r["model"](r["input"]).detach()},
                  str(root / f"m{i}.io.safetensors"))
        results[source] = r
    return root, results


@pytest.mark.parametrize("source", list(MODELS))
def test_support_matrix(matrix, source):
    """Groups found; the pruned network computes what the hard-masked one does (eval mode);
    its analytic MACs and params are fvcore's count of it; about half the MACs."""
    r = matrix[1][source]
    assert r["groups"] > 0
    assert r["gap"] <= 1e-4 * max(r["scale"], 1.0), (r["gap"], r["scale"])
    assert exact_cost(r), {k: r[k] for k in ("macs", "fvcore_macs", "params", "fvcore_params")}
    assert abs(r["macs"] / r["dense_macs"] - 0.5) <= 0.03


@pytest.mark.parametrize("source", ["timm:regnetx_002", "torchvision:regnet_y_400mf",
                                    "torchvision:resnext50_32x4d"])
def test_grouped_convolutions_lose_whole_groups(matrix, source):
    """No channel group is left whole anywhere (but one tied into a single set); the grouped
    convolutions of RegNet and ResNeXt keep fewer groups of their original width."""
    whole = {source: s["left_unpruned"] for source, s in matrix[1].items() if s["skipped_groups"]}
    # but ShuffleNet's third stage, whose chunks and shuffles tie the whole stream into one set
    assert list(whole) == ["torchvision:shufflenet_v2_x0_5"] and matrix[1][list(whole)[0]]["skipped_groups"] == 1
    assert "into one set: nothing to prune" in whole["torchvision:shufflenet_v2_x0_5"][0]
    r = matrix[1][source]
    dense = {n: m for n, m in build_source(source, 10, 3).named_modules()
             if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels}
    pruned = dict(r["model"].named_modules())
    assert dense and all(pruned[n].in_channels // pruned[n].groups == m.in_channels // m.groups
                         for n, m in dense.items() if n in pruned)
    assert any(pruned[n].groups < m.groups for n, m in dense.items() if n in pruned)


def test_exports_load_in_a_fresh_process_with_identical_outputs(matrix):
    """arch.json + safetensors rebuild every pruned network from its source, no pickle, no
    search code: the fresh process imports `export` only."""
    root, results = matrix
    script = (
        "import json, sys, torch\n"
        "from safetensors.torch import load_file\n"
        "from maskednas import export\n"
        "out = {}\n"
        f"for i in range({len(results)}):\n"
        f"    m = export.load(r'{root}' + f'/m{{i}}', trust_source=['benchmarks'])\n"
        f"    io = load_file(r'{root}' + f'/m{{i}}.io.safetensors')\n"
        "    with torch.no_grad():\n"
        "        out[i] = float((m(io['input']) - io['output']).abs().max())\n"
        "assert not any(k.startswith(('maskednas.supernet', 'maskednas.search', 'maskednas.derive')) for k in sys.modules)\n"
        "print(json.dumps(out))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    gaps = json.loads(done.stdout.strip().splitlines()[-1])
    assert gaps == {str(i): 0.0 for i in range(len(results))}


def test_residual_blocks_with_identity_shortcuts_are_found():
    net = UserModel(ModelSpaceConfig(source=RESNET20), 3, 10, 32)
    # 9 blocks; the first of stages 2 and 3 has a projection shortcut, so it cannot be skipped
    assert net.blocks == [f"blocks.{i}" for i in (0, 1, 2, 4, 5, 7, 8)]


def test_mask_and_keep_gradients_reach_every_choice_through_loss_and_cost():
    torch.manual_seed(0)
    net = UserModel(ModelSpaceConfig(source=RESNET20, mask_init=0.5, keep_init=0.5), 3, 10, 32)
    from maskednas.supernet.cost_model import discrete_cost
    loss = nn.functional.cross_entropy(net(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    grads = torch.autograd.grad(loss, net.arch_parameters())
    assert all(g.abs().sum() > 0 for g in grads)
    cost = discrete_cost(net, surrogate_temperature=1.0).macs
    grads = torch.autograd.grad(cost, net.arch_parameters())
    assert all(g.abs().sum() > 0 for g in grads)


def test_magnitude_initialised_masks_rank_channels_as_torch_pruning_does(tmp_path):
    """Logits start at mask_init + importance - 1, with Torch-Pruning's group magnitude
    importance of each group (computed here through its own API on the same network), the same
    offset for every group, so the logits order channels across groups as Torch-Pruning's global
    ranking does; a channel whose weights are all zero starts lowest."""
    import torch_pruning as tp
    torch.manual_seed(0)
    model = resnet20()
    block = model.blocks[0]
    with torch.no_grad():  # channel 3 inside the first block: every weight of it zero
        block.conv1.weight[3], block.bn1.weight[3], block.bn1.bias[3] = 0, 0, 0
        block.conv2.weight[:, 3] = 0
    torch.save(model.state_dict(), tmp_path / "trained.pt")
    net = UserModel(ModelSpaceConfig(source=RESNET20, checkpoint=str(tmp_path / "trained.pt"),
                                     mask_init_from="magnitude"), 3, 10, 32)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, 3, 32, 32))
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    modules = dict(model.named_modules())
    for key, mask in net.masks.items():
        root, handler = net.groups.roots[key]
        group = graph.get_pruning_group(modules[root], handler, list(range(mask.channels)))
        torch.testing.assert_close(mask.logits.detach(), 2.0 + importance(group), rtol=1e-5, atol=1e-5)
    inner = next(m for k, m in net.masks.items() if net.groups.roots[k][0] == "blocks.0.conv1")
    logits = inner.logits.detach()
    assert int(logits.argmin()) == 3 and float(logits.min()) == pytest.approx(2.0)
    constant = UserModel(ModelSpaceConfig(source=RESNET20), 3, 10, 32)
    assert all(torch.all(m.logits == 3.0) for m in constant.masks.values())


def test_expected_cost_is_exact_at_hard_gates():
    """At integer widths and one-hot keep weights the cost is the pruned network's fvcore count
    (the matrix checks derived networks; this one keeps 5 channels per group, all blocks)."""
    from maskednas.export.flops import fvcore_report
    net = UserModel(ModelSpaceConfig(source=RESNET20), 3, 10, 32).eval()
    keep = {g: torch.arange(5) for g in net.masks}
    ops = {b: "keep" for b in net.blocks}
    arch = net.architecture(ops, {g: 5 for g in net.masks})
    model = net.slim(arch, keep)
    assert (arch.macs, arch.params) == fvcore_report(model, torch.zeros(1, 3, 32, 32))[:2]


def test_checkpoints_load_from_safetensors_and_torch_files(tmp_path):
    trained = resnet20()
    for p in trained.parameters():
        nn.init.normal_(p)
    state = {k: v.contiguous() for k, v in trained.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": state}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        net = UserModel(ModelSpaceConfig(source=RESNET20, checkpoint=str(tmp_path / name)), 3, 10, 32)
        assert torch.equal(net.model.conv1.weight, trained.conv1.weight)
        assert torch.equal(net.distillation_teacher().fc.weight, trained.fc.weight)
    with pytest.warns(UserWarning, match="fc.weight has another class count"):
        net = UserModel(ModelSpaceConfig(source=RESNET20, checkpoint=str(tmp_path / "w.pth")), 3, 7, 32)
    assert net.model.fc.out_features == 7 and torch.equal(net.model.conv1.weight, trained.conv1.weight)
    broken = dict(state)
    broken["conv1.weight"] = torch.zeros(3, 3, 3, 3)
    save_file(broken, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelSourceError, match="conv1.weight"):
        UserModel(ModelSpaceConfig(source=RESNET20, checkpoint=str(tmp_path / "bad.safetensors")), 3, 10, 32)


def mlp_head_net(num_classes: int = 10, in_channels: int = 3, hidden: int = 32) -> nn.Module:
    """Convolutions, then two linear layers: only the last one gives the class logits."""
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def test_only_the_classifier_may_differ_from_the_checkpoint(tmp_path):
    """The classifier is the layer whose outputs are the logits: a hidden linear layer of another
    width is a checkpoint that does not fit, not a class count to leave fresh."""
    source = "test_user_model:mlp_head_net"
    save_file({k: v.contiguous() for k, v in mlp_head_net(hidden=16).state_dict().items()},
              str(tmp_path / "narrow.safetensors"))
    with pytest.raises(ModelSourceError, match=r"other shapes \['4.bias', '4.weight'"):
        UserModel(ModelSpaceConfig(source=source, checkpoint=str(tmp_path / "narrow.safetensors")), 3, 10, 16)
    save_file({k: v.contiguous() for k, v in mlp_head_net(num_classes=5).state_dict().items()},
              str(tmp_path / "five.safetensors"))
    with pytest.warns(UserWarning, match="6.weight has another class count"):
        net = UserModel(ModelSpaceConfig(source=source, checkpoint=str(tmp_path / "five.safetensors")), 3, 10, 16)
    assert net.model[6].out_features == 10


class FixedHead(nn.Module):
    """A user's network whose factory takes no class or channel count."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 1000)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def fixed_head() -> FixedHead:
    return FixedHead()


def test_heads_and_input_channels_adapt_to_the_data():
    net = build_source(f"{__name__}:fixed_head", 7, 1)
    assert (net.conv.in_channels, net.fc.out_features) == (1, 7)
    tv = build_source("torchvision:resnet18", 5, 1)
    assert (tv.conv1.in_channels, tv.fc.out_features) == (1, 5)
    assert tv(torch.zeros(2, 1, 32, 32)).shape == (2, 5)
    tm = build_source("timm:resnet26d", 5, 1)
    assert tm(torch.zeros(2, 1, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize("source, message", [
    ("torchvision:resnet_18", "close names: resnet18"),
    ("timm:convnext_atoo", "close names: convnext_atto"),
    ("../models/net.py:build", "never a file path"),
    ("resnet18", "torchvision:<name>, timm:<name>, hf:<model_type> or package.module:function"),
    ("benchmarks.no_such_module:net", "cannot import 'benchmarks.no_such_module'"),
    ("benchmarks.cifar_resnet:resnet21", "has no callable 'resnet21'"),
])
def test_bad_sources_are_named_with_what_is_allowed(source, message):
    with pytest.raises(ModelSourceError, match=message):
        build_source(source, 10, 3)


class TwoHeads(nn.Module):
    """Two classifiers averaged (as DeiT's and EfficientFormer's distillation heads), or, with
    `multiply`, a product of them, which no classifier makes."""

    def __init__(self, num_classes: int = 10, multiply: bool = False) -> None:
        super().__init__()
        self.conv, self.multiply = nn.Conv2d(3, 8, 3), multiply
        self.head, self.head_dist = nn.Linear(8, num_classes), nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.conv(x).mean((2, 3))
        return self.head(x) * self.head_dist(x) if self.multiply else (self.head(x) + self.head_dist(x)) / 2


def two_heads(num_classes: int = 10) -> TwoHeads:
    return TwoHeads(num_classes)


def multiplied_heads(num_classes: int = 10) -> TwoHeads:
    return TwoHeads(num_classes, multiply=True)


def test_classifiers_behind_pooling_or_summed_are_found_and_other_forks_refused():
    """SqueezeNet's logits come out of conv -> ReLU -> average pooling -> flatten: that conv is
    the classifier, whose outputs are never pruned; two averaged heads are both classifiers; a
    product of heads is refused by name."""
    net = UserModel(ModelSpaceConfig(source="torchvision:squeezenet1_1"), 3, 10, 64)
    assert net.trace.output_layers == ("classifier.1",)
    assert all("classifier.1" not in name for name in net.groups.outputs)
    assert check("torchvision:squeezenet1_1", 64)["gap"] < 1e-5  # slimmed == hard-masked
    net = UserModel(ModelSpaceConfig(source="tests.test_user_model:two_heads"), 3, 10, 16)
    assert net.trace.output_layers == ("head", "head_dist") and list(net.groups.sizes) == ["conv"]
    r = check("tests.test_user_model:two_heads", 16)
    assert exact_cost(r) and r["gap"] <= 1e-5 * r["scale"] and r["model"].head.out_features == 10
    with pytest.raises(ValueError, match="multiplied_heads: the network's output does not come"):
        UserModel(ModelSpaceConfig(source="tests.test_user_model:multiplied_heads"), 3, 10, 16)


def test_ignored_layers_keep_their_channels_and_unknown_ones_are_refused():
    net = UserModel(ModelSpaceConfig(source=RESNET20, ignore=["blocks.1.conv1"]), 3, 10, 32)
    assert all("blocks.1.conv1" not in m for k, m in net.groups.members.items())
    with pytest.raises(ValueError, match=r"model.ignore names \['blocks.1.conv9'\]"):
        UserModel(ModelSpaceConfig(source=RESNET20, ignore=["blocks.1.conv9"]), 3, 10, 32)


class EinsumNet(nn.Module):
    """A network with an op fvcore counts and the cost model does not (an einsum)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.conv(x)
        return self.fc(torch.einsum("nchw,nchw->nchw", x, x).mean((2, 3)))


def einsum_net(num_classes: int = 10) -> EinsumNet:
    return EinsumNet(num_classes)


def test_an_op_the_cost_model_does_not_count_stops_the_run_with_its_name():
    with pytest.raises(ValueError, match=r"fvcore counts 14,160 MACs .* 'einsum': 256"):
        UserModel(ModelSpaceConfig(source=f"{__name__}:einsum_net"), 3, 10, 8)


class TwiceNet(nn.Module):
    """One conv called twice: fvcore counts both calls, the cost model one layer once."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.conv(self.conv(self.stem(x))).mean((2, 3)))


def twice_net(num_classes: int = 10) -> TwiceNet:
    return TwiceNet(num_classes)


def test_a_cost_mismatch_names_the_layer_whose_count_differs():
    with pytest.raises(ValueError, match=r"the layers whose counts differ .*: conv \(Conv2d\): "
                                         r"73,728, 584 / 36,864, 584"):
        UserModel(ModelSpaceConfig(source=f"{__name__}:twice_net"), 3, 10, 8)


class SlicedNet(nn.Module):
    """conv `b` reads the first half of `a`'s channels (a slice whose bounds are code)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(14, num_classes)

    def forward(self, x):
        x = torch.relu(self.a(x))
        y = torch.relu(self.b(x[:, :4]))
        return self.fc(torch.cat([x.mean((2, 3)), y.mean((2, 3))], 1))


def sliced_net(num_classes: int = 10) -> SlicedNet:
    return SlicedNet(num_classes)


def test_a_layer_reading_part_of_a_group_leaves_it_whole_and_is_costed_exactly():
    """Its width was 0 (a cost check that blamed an unmodelled op); now the group is left
    unpruned with the layer named, and the rest of the network is pruned and exact."""
    r = check(f"{__name__}:sliced_net", 8)
    assert "a: b reads 4 of the 8 channels of a (a channel split or slice" in r["left_unpruned"][0]
    assert (r["macs"], r["params"]) == (r["fvcore_macs"], r["fvcore_params"])
    assert r["groups"] == 1 and r["gap"] <= 1e-5 * r["scale"]


class CrossStageNet(nn.Module):
    """A cross-stage partial block: `exp`'s channels split by a size in code, the second part
    run through a residual block first, the first part concatenated last (timm's CSPNet)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.exp = nn.Conv2d(3, 16, 3, padding=1)
        self.inner, self.outer = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 3, padding=1)
        self.transition_b, self.transition = nn.Conv2d(8, 8, 1), nn.Conv2d(16, 12, 1)
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x):
        xs, xb = torch.relu(self.exp(x)).split(8, dim=1)
        xb = xb + self.outer(torch.relu(self.inner(xb)))
        x = torch.relu(self.transition(torch.cat([xs, self.transition_b(xb)], 1)))
        return self.fc(x.mean((2, 3)))


def cross_stage_net(num_classes: int = 10) -> CrossStageNet:
    return CrossStageNet(num_classes)


def test_a_split_is_mapped_by_the_part_each_layer_reads_and_keeps_its_sizes():
    """Torch-Pruning gave the parts to the layers in the order it found them (`xb` first), so
    `exp`'s channels were swapped between the parts, and the split's constant size made the
    pruned network crash. Now `exp` and the residual stream keep their channels (the split's
    sizes are code), the concatenation's slices sit at their offsets, the rest is pruned. Both
    parts are left whole: the residual stream's group (rooted at `outer`) and `exp`'s channels
    that only the concatenation reads (a group of their own, rooted at `exp`)."""
    net = UserModel(ModelSpaceConfig(source=f"{__name__}:cross_stage_net"), 3, 10, 8)
    inputs = {n: [(s.group, s.index.tolist()) for s in net.groups.inputs[n].slices]
              for n in ("transition", "outer")}
    assert inputs == {"transition": [("transition_b", list(range(8, 16)))], "outer": [("inner", [0, 1, 2, 3])]}
    assert getattr(net.groups.outputs.get("exp"), "slices", []) == [] and set(net.groups.skipped) == {"outer", "exp"}
    r = check(f"{__name__}:cross_stage_net", 8)
    assert r["gap"] <= 1e-5 * r["scale"] and exact_cost(r)


def test_the_split_mapping_holds_in_every_pruning_group_of_the_graph():
    """Torch-Pruning redoes its index mappings in each `get_pruning_group`: inside
    `dependency_graph` a channel of the split's second part still reaches the layers reading
    that part (at their own index), and one of the first part only the concatenation's reader."""
    import torch_pruning as tp
    from maskednas.supernet.channel_groups import dependency_graph
    model = cross_stage_net()
    with dependency_graph(model, torch.zeros(1, 3, 8, 8)) as dg:
        reached = lambda channel: {
            (type(i.dep.target.module).__name__, int(j)) for i in dg.get_pruning_group(
                model.exp, tp.prune_conv_out_channels, [channel]).items
            if i.dep.target.module in (model.inner, model.transition) for j in i.idxs}
        assert reached(9) == {("Conv2d", 1)} and reached(3) == {("Conv2d", 3)}
        first = dg.get_pruning_group(model.exp, tp.prune_conv_out_channels, [9])
        assert any(i.dep.target.module is model.inner for i in first.items)
        assert not any(i.dep.target.module is model.transition for i in first.items)


class DualPathNet(nn.Module):
    """DPN-style: a slice of one layer's channels concatenated with another layer's."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.a, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 6, 3, padding=1)
        self.d, self.fc = nn.Conv2d(10, 8, 1), nn.Linear(8, num_classes)

    def forward(self, x):
        dense = torch.cat([torch.relu(self.a(x))[:, 4:], torch.relu(self.c(x))], 1)
        return self.fc(torch.relu(self.d(dense)).mean((2, 3)))


def dual_path_net(num_classes: int = 10) -> DualPathNet:
    return DualPathNet(num_classes)


def test_a_concatenated_slice_has_the_size_the_forward_gave_it():
    """Torch-Pruning could not infer the slice's channel count (None) and its graph failed;
    with the sizes of the call, `c`'s channels sit after the slice in `d`'s input."""
    net = UserModel(ModelSpaceConfig(source=f"{__name__}:dual_path_net"), 3, 10, 8)
    assert [(s.group, s.index.tolist()) for s in net.groups.inputs["d"].slices] == [("c", list(range(4, 10)))]
    assert set(net.groups.skipped) == {"a"}
    r = check(f"{__name__}:dual_path_net", 8)
    assert exact_cost(r) and r["gap"] <= 1e-5 * r["scale"]


class FusionNet(nn.Module):
    """HRNet-style fusion: a low-resolution branch upsampled (nearest, bilinear) and added."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.high, self.low = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up, self.low2 = nn.Upsample(scale_factor=2), nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        low = torch.relu(self.low(x))
        x = self.high(x) + self.up(low) + F.interpolate(self.low2(low), scale_factor=2, mode="bilinear")
        return self.fc(torch.relu(x).mean((2, 3)))


def fusion_net(num_classes: int = 10) -> FusionNet:
    return FusionNet(num_classes)


def test_upsampling_is_counted_per_kept_channel_as_fvcore_counts_it():
    """fvcore counts 1 (nearest) or 4 (bilinear) per output element; without these the cost
    check refused HRNet for an op it does not model."""
    net = UserModel(ModelSpaceConfig(source=f"{__name__}:fusion_net"), 3, 10, 8)
    assert [(p.producers, p.size) for p in net.trace.pools] == [(("low",), 64), (("low2",), 256)]
    r = check(f"{__name__}:fusion_net", 8)
    assert exact_cost(r) and r["macs"] < r["dense_macs"] and r["gap"] <= 1e-5 * r["scale"]


class ScaledNet(nn.Module):
    """A MetaFormer layer scale (a weight viewed to a `shape` attribute) right before pooling."""

    def __init__(self, num_classes: int = 10) -> None:
        from timm.models.metaformer import Scale
        super().__init__()
        self.conv, self.scale = nn.Conv2d(3, 8, 3, padding=1), Scale(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.scale(torch.relu(self.conv(x))), 1).flatten(1))


def scaled_net(num_classes: int = 10) -> ScaledNet:
    return ScaledNet(num_classes)


def test_a_layer_scale_shrinks_its_shape_and_pooling_after_it_is_costed_at_its_width(tmp_path):
    """PoolFormer's pruned `Scale` kept `shape` (64, 1, 1) and crashed; the pooling after it
    was costed at the dense width."""
    r = check(f"{__name__}:scaled_net", 8, export_to=tmp_path / "m")
    kept = r["model"].scale.scale.numel()
    assert kept < 8 and r["model"].scale.shape == (kept, 1, 1)
    assert exact_cost(r) and r["gap"] <= 1e-5 * r["scale"]
    from maskednas import export
    loaded = export.load(tmp_path / "m", trust_source=[__name__.split(".")[0]]).eval()
    assert loaded.scale.shape == (kept, 1, 1)
    with torch.no_grad():
        assert torch.equal(loaded(r["input"]), r["model"](r["input"]))


class RmsNormNet(nn.Module):
    """A conv, a timm RMS-style norm over its channels, a conv: the norm's statistic must be
    that of the kept channels."""

    def __init__(self, num_classes: int = 10, norm: str = "RmsNorm2d", affine: bool = True) -> None:
        from timm.layers import norm as norms
        super().__init__()
        self.a, self.norm = nn.Conv2d(3, 8, 3, padding=1), getattr(norms, norm)(8, affine=affine)
        self.b, self.fc = nn.Conv2d(8, 8, 1), nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.a(x)
        x = self.norm(x) if "2d" in type(self.norm).__name__ else self.norm(x.movedim(1, -1)).movedim(-1, 1)
        return self.fc(torch.relu(self.b(x)).mean((2, 3)))


def rms_norm_net(num_classes: int = 10) -> RmsNormNet:
    return RmsNormNet(num_classes, "RmsNorm2d")


def simple_norm_net(num_classes: int = 10) -> RmsNormNet:
    return RmsNormNet(num_classes, "SimpleNorm2d")


def rms_norm_last_net(num_classes: int = 10) -> RmsNormNet:
    return RmsNormNet(num_classes, "RmsNorm")


def weightless_norm_net(num_classes: int = 10) -> RmsNormNet:
    return RmsNormNet(num_classes, "RmsNorm2d", affine=False)


def test_a_norm_without_weights_leaves_the_channels_it_reads_whole():
    """Torch-Pruning's groups never reach it, so no gate would: pruning `a` made the pruned
    network differ from the hard-masked one; now `a`'s group is left whole, `b`'s is pruned."""
    r = check(f"{__name__}:weightless_norm_net", 8)
    assert "a: norm normalises over these channels without a weight" in r["left_unpruned"][0]
    assert r["model"].a.out_channels == 8 and r["model"].b.out_channels < 8
    assert exact_cost(r) and r["gap"] <= 1e-5 * r["scale"]


@pytest.mark.parametrize("builder", ["rms_norm_net", "simple_norm_net", "rms_norm_last_net"])
def test_rms_style_norms_use_the_statistic_of_the_kept_channels(builder, tmp_path):
    """Without a rule their weight was a loose parameter: pruned, never gated, and the pruned
    network differed from the hard-masked one (ConvNeXt-RMS by 1e-2 of its output)."""
    r = check(f"{__name__}:{builder}", 8, export_to=tmp_path / "m")
    kept = r["model"].norm.weight.numel()
    assert kept < 8 and r["model"].norm.normalized_shape == (kept,)
    assert exact_cost(r) and r["gap"] <= 1e-5 * r["scale"]


class ShortcutBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x, shortcut=None):
        return (x if shortcut is None else shortcut) + self.conv(x)


class ShortcutArgNet(nn.Module):
    """DLA-style: a residual block called with its shortcut as a second argument."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem, self.block, self.fc = nn.Conv2d(3, 8, 3, padding=1), ShortcutBlock(), nn.Linear(8, num_classes)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return self.fc(self.block(x, x).mean((2, 3)))


def shortcut_arg_net(num_classes: int = 10) -> ShortcutArgNet:
    return ShortcutArgNet(num_classes)


def test_a_removed_block_called_with_more_arguments_returns_its_input():
    """`nn.Identity` took one argument: DLA crashed once a block was removed."""
    from maskednas.export.pruned_model import remove_blocks
    net = UserModel(ModelSpaceConfig(source=f"{__name__}:shortcut_arg_net"), 3, 10, 8)
    assert net.blocks == ["block"]
    model, x = shortcut_arg_net().eval(), torch.randn(2, 3, 8, 8)
    remove_blocks(model, ["block"])
    assert torch.equal(model(x), model.fc(torch.relu(model.stem(x)).mean((2, 3))))


def same_padded_net(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding="same"), nn.ReLU(), nn.Conv2d(8, 8, 5, padding="same"),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def test_string_padded_convolutions_are_counted():
    """fvcore has no handle for them (`aten::_convolution_mode`) and counted ConvMixer's depthwise
    convolutions as 0; its report now counts them as any other convolution."""
    from maskednas.export.flops import fvcore_report
    macs, _, _ = fvcore_report(same_padded_net(), torch.zeros(1, 3, 8, 8))
    assert macs == 8 * 8 * (8 * 3 * 9 + 8 * 8 * 25) + 8 * 64 + 8 * 10  # convs, pooling, linear
    r = check(f"{__name__}:same_padded_net", 8)
    assert exact_cost(r) and r["macs"] < r["dense_macs"]


class WideningBlock(nn.Module):
    """ReXNet's: the input added into the first channels of a wider output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 12, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return torch.cat([y[:, :8] + x, y[:, 8:]], 1)


def widening_net(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), WideningBlock(), nn.Conv2d(12, 8, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def test_a_block_that_widens_its_input_is_no_residual_block():
    """Skipping it would return the narrower input: ReXNet's hard-masked network crashed."""
    net = UserModel(ModelSpaceConfig(source=f"{__name__}:widening_net"), 3, 10, 8)
    assert net.blocks == []
    r = check(f"{__name__}:widening_net", 8)
    assert exact_cost(r) and r["gap"] <= 1e-5 * r["scale"]


def test_distillation_without_trained_weights_is_refused():
    with pytest.raises(ConfigError, match="model.checkpoint is unset"):
        load_config(ROOT / "configs" / "prune_model.yaml", ["finetune.kd_weight=0.5"])
    load_config(ROOT / "configs" / "prune_model.yaml", ["finetune.kd_weight=0.5",
                                                         "model.checkpoint=net.safetensors"])
    for override in ("search.kd_weight=0.5", "model.mask_init_from=magnitude"):
        with pytest.raises(ConfigError, match="model.checkpoint is unset|model.pretrained"):
            load_config(ROOT / "configs" / "prune_model.yaml", [override])


def test_the_search_settings_reach_the_search(tmp_path):
    """search.kd_weight, search.arch_loss_weight and model.mask_init_from, from the config to
    the searcher's steps: its loss distils from the checkpoint's network, the architect weighs
    the loss's gradient, and the masks start from the magnitudes."""
    from maskednas.pipeline.setup import prepare_search
    from maskednas.training.losses import cross_entropy, distillation_loss
    trained = resnet20(10, 1)
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp_path / "net.safetensors"))
    cfg = load_config(None, ["space=model", f"model.source={RESNET20}", f"model.checkpoint={tmp_path / 'net.safetensors'}",
                             "search.kd_weight=0.25", "search.arch_loss_weight=0.5",
                             "model.mask_init_from=magnitude", f"out_dir={tmp_path}"])
    searcher = prepare_search(cfg, tmp_path / "run")
    assert searcher.architect.loss_weight == 0.5 and searcher.architect.loss_fn is searcher.loss_fn
    x, y = next(iter(searcher.train_loader))
    logits = torch.randn(len(y), 10)
    with torch.no_grad():
        expected = 0.75 * cross_entropy(logits, y) + 0.25 * distillation_loss(logits, trained.eval()(x), 4.0)
    assert float(searcher.loss_fn(logits, x, y)) == pytest.approx(float(expected), rel=1e-5)
    assert any(not torch.all(m.logits == 3.0) for m in searcher.net.masks.values())


def test_train_prunes_a_user_network_end_to_end(tmp_path):
    """One command: the user's ResNet-20 with its checkpoint on digits (1 input channel: the
    factory takes in_channels), searched, pruned, distilled, exported; TensorBoard has the
    masks and kept channels of every group."""
    trained = {k: v.contiguous() for k, v in resnet20(10, 1).state_dict().items()}
    save_file(trained, str(tmp_path / "net.safetensors"))
    done = subprocess.run(
        [sys.executable, "train.py", f"model.source={RESNET20}",
         f"model.checkpoint={tmp_path / 'net.safetensors'}", "search.epochs=2",
         "search.warmup_epochs=1", "finetune.epochs=1", "finetune.kd_weight=0.5",
         f"out_dir={tmp_path}", "name=run", "threads=2"],
        cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary-export.json").read_text())
    assert summary["macs"] == summary["fvcore_flops"]
    assert abs(summary["macs"] / summary["target_macs"] - 1) <= 0.03
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "run")).Reload()
    net = UserModel(ModelSpaceConfig(source=RESNET20), 1, 10, 8)
    assert {f"channels/{g}" for g in net.masks} <= set(events.Tags()["scalars"])
    assert {f"alpha/{b}/keep" for b in net.blocks} <= set(events.Tags()["scalars"])


@pytest.mark.parametrize("source", ["tests.test_channel_mixing:plain_net", "torchvision:mobilenet_v3_small",
                                    "tests.test_channel_mixing:normalize_net"])
def test_the_whole_pipeline_runs_on_each_kind_of_network(tmp_path, source):
    """A short search with TensorBoard, derive, slim, fine-tune, export and load, on a network
    without residual blocks (no keep/skip choice), one with SE blocks and hard-swish, and one
    with a functional channel normalisation: the export loads and reproduces its test accuracy."""
    from maskednas import export
    from maskednas.datasource import DeviceLoader, load_dataset
    from maskednas.export import read_metrics
    from maskednas.training.finetune import evaluate

    done = subprocess.run(
        [sys.executable, "train.py", f"model.source={source}", "search.epochs=1",
         "search.warmup_epochs=0", "finetune.epochs=1", f"out_dir={tmp_path}", "name=run"],
        cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))
    model = export.load(tmp_path / "run" / "export", trust_source=["tests"])
    metrics = read_metrics(tmp_path / "run" / "export")
    assert metrics["macs"] == metrics["fvcore_flops"] == model.arch.cost().macs
    data, stats = load_dataset("digits"), metrics["data"]
    test = DeviceLoader(data.x_test, data.y_test, 64, stats["mean"], stats["std"], shuffle=False,
                        drop_last=False)
    assert evaluate(model, test)["acc"] == metrics["test_acc"]


class ConcatPoolNet(nn.Module):
    """Two branches concatenated, then pooled straight into the classifier (GoogLeNet's end)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b = nn.Conv2d(8, 12, 1), nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(18, num_classes)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def concat_pool_net(num_classes: int = 10) -> ConcatPoolNet:
    return ConcatPoolNet(num_classes)


def test_pooling_over_a_concatenation_counts_every_branch():
    """The pooled channels are both branches' (12 + 6), at full and at pruned widths: the
    cost model matches fvcore on the network and on its pruned export."""
    net = UserModel(ModelSpaceConfig(source="tests.test_user_model:concat_pool_net"), 3, 10, 8)
    (pool,) = net.trace.pools
    assert pool.producers == ("a", "b") and pool.size == 64
    r = check("tests.test_user_model:concat_pool_net", 8)
    assert (r["macs"], r["params"]) == (r["fvcore_macs"], r["fvcore_params"]) and r["macs"] < r["dense_macs"]
    assert r["gap"] < 1e-5


class SpareNet(nn.Module):
    """`spare` never runs; the forward reads `gain`'s weight without calling `gain`."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, num_classes)
        self.spare = nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8))
        self.gain = nn.Linear(8, 1, bias=False)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return self.fc(x.mean((2, 3)) * self.gain.weight.sum())


def spare_net(num_classes: int = 10) -> SpareNet:
    return SpareNet(num_classes)


def test_modules_the_forward_never_runs_are_left_out_of_the_cost_and_named():
    """The cost counts what the forward runs: fvcore's params less the spare module's 600
    (a weight read without calling its layer stays counted); a warning names the spare
    module; the pruned network keeps it."""
    with pytest.warns(UserWarning, match=r"never runs spare \(600 params\): left out of the cost"):
        net = UserModel(ModelSpaceConfig(source=f"{__name__}:spare_net"), 3, 10, 8)
    assert net.trace.unused == {"spare": 600}
    dense = net.dense_architecture().cost()
    assert dense.params == sum(p.numel() for p in net.model.parameters()) - 600
    r = check(f"{__name__}:spare_net", 8)
    assert r["unused_params"] == 600 and exact_cost(r) and r["macs"] < r["dense_macs"]
    assert r["gap"] < 1e-5 and isinstance(r["model"].spare, nn.Sequential)


def test_googlenet_is_built_without_auxiliary_heads_and_a_tuple_output_is_refused():
    """torchvision builds GoogLeNet and Inception v3 with auxiliary heads unless told not to:
    here they are never built (or, with weights, dropped after loading), so the network prunes
    exactly; a network that returns a tuple in training mode stops with what to do."""
    r = check("torchvision:googlenet", 64)
    assert exact_cost(r) and r["unused_params"] == 0 and r["gap"] <= 1e-5 * r["scale"]
    import torchvision  # with weights the builders keep the heads: they are dropped after loading
    for name, heads in (("googlenet", ("aux1", "aux2")), ("inception_v3", ("AuxLogits",))):
        model = drop_auxiliary_heads(torchvision.models.get_model(name, num_classes=10, aux_logits=True,
                                                                  init_weights=False))
        assert all(getattr(model, h) is None for h in heads)
        assert isinstance(model.train()(torch.zeros(2, 3, 96, 96)), torch.Tensor)
    net = UserModel(ModelSpaceConfig(source=f"{__name__}:tuple_in_training"), 3, 10, 8).train()
    with pytest.raises(TypeError, match=r"returned a tuple, not a tensor of logits, in training mode"):
        net(torch.zeros(2, 3, 8, 8))


class TupleInTraining(SpareNet):
    def forward(self, x):
        out = super().forward(x)
        return (out, out) if self.training else out


def tuple_in_training(num_classes: int = 10) -> TupleInTraining:
    return TupleInTraining(num_classes)


@pytest.mark.parametrize("before, after, refused", [
    ((1, 8, 4, 4), (1, 2, 4, 4, 4), True),  # a channel shuffle's split
    ((1, 4, 2, 4, 4), (1, 8, 4, 4), True),  # and its merge
    ((1, 2, 2, 8, 4, 4), (1, 32, 4, 4), True),  # space-to-depth's merge into the channels
    ((1, 8, 4, 4), (1, 8, 16), False),  # tokens
    ((1, 8, 4, 4), (1, 128), False),  # a flatten before a classifier
    ((1, 8, 4, 4), (1, 1, 8, 4, 4), False),  # an added dimension of one
    ((1, 2, 4, 2, 4, 8), (1, 8, 8, 8), False),  # Swin's window reverse (channels last)
])
def test_only_reshapes_that_split_or_merge_channels_of_a_feature_map_are_refused(before, after, refused):
    feature = torch.zeros(before, requires_grad=True) * 1  # made by an op, as a layer's output is
    assert _reshapes_channels(feature, feature.reshape(after)) is refused
    image = torch.zeros(before)  # the input image (TResNet's space-to-depth reads it): allowed
    assert _reshapes_channels(image, image.reshape(after)) is False


def test_a_torch_pruning_failure_is_one_line_naming_the_op_it_mapped():
    from maskednas.supernet.channel_groups import _graph_failure

    def update_split_index_mapping():  # as Torch-Pruning's index mapping of a split is named
        return 1 // 0

    try:
        update_split_index_mapping()
    except ZeroDivisionError as e:
        message = _graph_failure(e)
    assert message.startswith("Torch-Pruning's dependency graph, which finds the channel groups, "
                              "fails where the network maps channels through a split or chunk of "
                              "the channels (ZeroDivisionError: integer division or modulo by zero)")
    assert "\n" not in message


def test_dpn_prunes_exactly_its_concatenations_of_slices_mapped_by_the_call():
    """Torch-Pruning mapped a DPN-48b channel past a layer's width (its inferred piece sizes
    failed on a piece that is a slice, after a split): the pieces now have the sizes the call had."""
    r = check("timm:dpn48b", 32)
    assert r["gap"] <= 1e-4 * max(r["scale"], 1.0) and exact_cost(r)
    assert abs(r["macs"] / r["dense_macs"] - 0.5) <= 0.03


def test_a_channel_mapped_past_a_layers_width_refuses_the_network():
    """A misread of the graph (a channel mapped to position 8 of an 8-channel input) is refused
    when the space is built, naming the layer, never pruned into a crash."""
    from maskednas.supernet.channel_groups import ChannelGroups, _add_group, _Found
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1))
    found = _Found("0", None, list(range(8)), [("input", "1", [1, 2, 3, 4, 5, 6, 7, 8], list(range(8)))],
                   [], None, None, classes=list(range(8)))
    with pytest.raises(ChannelGraphError, match=r"maps channel 8 of 0's group into the input of 1, "
                                                r"which has 8 channels: it misreads an op"):
        _add_group(model, ChannelGroups({}, {}, {}, {}, {}, {}), [found], loose=False)


class NormsWithoutBias(nn.Module):
    """timm's GroupNorm1NoBias and LayerNorm2dNoBias: an affine weight, no bias."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.gn = nn.GroupNorm(2, 8)
        self.gn.bias = None
        self.fc1, self.ln = nn.Linear(8, 6), nn.LayerNorm(6, bias=False)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        x = self.b(torch.relu(self.gn(self.a(x))))
        return self.fc(self.ln(self.fc1(x.mean((2, 3)))))


def norms_without_bias(num_classes: int = 10) -> NormsWithoutBias:
    return NormsWithoutBias(num_classes)


def test_norms_without_a_bias_are_costed_and_slimmed_exactly():
    """Their params were counted twice (fvcore: one vector), and Torch-Pruning's GroupNorm
    pruner sliced a bias that is not there."""
    r = check(f"{__name__}:norms_without_bias", 8)
    assert r["gap"] <= 1e-5 * r["scale"] and exact_cost(r) and r["macs"] < r["dense_macs"]
    assert r["model"].gn.bias is None and r["model"].gn.num_channels < 8


class StandardisedConvs(nn.Module):
    """NF-Net style: weight-standardised convs (dense with a gain, depthwise, `Same` padding)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        from timm.layers import ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d
        self.a = ScaledStdConv2d(3, 8, 3)
        self.dw = ScaledStdConv2d(8, 8, 3, groups=8)
        self.b = ScaledStdConv2dSame(8, 12, 3, stride=2)
        self.c = StdConv2d(12, 8, 1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.a(x))))
        return self.fc(self.c(torch.relu(self.b(x))).mean((2, 3)))


def standardised_convs(num_classes: int = 10) -> StandardisedConvs:
    return StandardisedConvs(num_classes)


def test_weight_standardised_convs_are_costed_with_their_standardisation_and_prune_exactly():
    """fvcore counts the per-filter batch_norm on the weight and the gain; the slimmed filters
    are standardised over their kept inputs, so the masked ones are over gate-weighted ones."""
    r = check(f"{__name__}:standardised_convs", 8)
    assert r["gap"] <= 1e-5 * r["scale"] and exact_cost(r) and r["macs"] < r["dense_macs"]
    model = r["model"]
    assert model.a.gain.shape[0] == model.a.out_channels < 8 and model.b.in_channels < 8


class NormLinearHead(nn.Module):
    """RepViT's and LeViT's classifier: BatchNorm1d on the pooled features, then a linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.a, self.fc1 = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 12)
        self.bn, self.fc = nn.BatchNorm1d(12), nn.Linear(12, num_classes)

    def forward(self, x):
        return self.fc(self.bn(self.fc1(torch.relu(self.a(x)).mean((2, 3)))))


def norm_linear_head(num_classes: int = 10) -> NormLinearHead:
    return NormLinearHead(num_classes)


def test_a_batchnorm1d_is_costed_and_pruned_with_its_channels():
    r = check(f"{__name__}:norm_linear_head", 8)
    assert r["gap"] <= 1e-5 * r["scale"] and exact_cost(r) and r["model"].bn.num_features < 12


class SharedPieces(nn.Module):
    """NASNet-style: two pieces of a concatenation made from one layer's output (one through a
    pooling no module runs), then a functional global pooling."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.a, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(16, num_classes)

    def forward(self, x):
        y = torch.relu(self.a(x))
        z = torch.cat([y, F.avg_pool2d(y, 3, 1, 1)], 1)
        return self.fc(F.adaptive_avg_pool2d(z, 1).flatten(1))


def shared_pieces(num_classes: int = 10) -> SharedPieces:
    return SharedPieces(num_classes)


def test_a_pooling_over_a_concatenation_counts_every_piece_even_from_one_layer():
    """The pooling reads 16 channels, both pieces `a`'s: the second was lost (8 counted)."""
    net = UserModel(ModelSpaceConfig(source=f"{__name__}:shared_pieces"), 3, 10, 8)
    assert net.trace.pools[0].producers == ("a", "a")
    r = check(f"{__name__}:shared_pieces", 8)
    assert r["gap"] <= 1e-5 * r["scale"] and exact_cost(r) and r["model"].a.out_channels < 8


def plain_net(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))


def test_a_network_with_nothing_to_prune_is_refused_naming_why():
    """Every group left whole and no block to skip: a search would have no choice (derive
    crashed on an empty ranking)."""
    with pytest.raises(ChannelGraphError, match=r"plain_net: nothing to prune: no channel group is "
                                                r"pruned \(every channel reaches the classifier's "
                                                r"outputs or a layer in model.ignore\) and no "
                                                r"residual block can be skipped"):
        UserModel(ModelSpaceConfig(source=f"{__name__}:plain_net", ignore=["0"]), 3, 10, 8)


def test_the_discretizer_thresholds_no_channels_when_there_are_no_groups():
    from maskednas.derive.discretize import _threshold_for_target
    assert _threshold_for_target(lambda t: {}, lambda counts: 0.0, {}, 1.0) == 0.0
