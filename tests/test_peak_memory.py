"""The peak activation memory target (one file in supernet/targets): exact against the exported
network's own tensors, differentiable in the masks, met by derivation, refused where a space has
no per-layer shapes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.support_matrix import randomize
from maskednas.derive import derive, slim
from maskednas.derive.discretize import budget
from maskednas.export import load, save_export
from maskednas.pipeline.config import ConfigError, load_config
from maskednas.supernet.cost_model import discrete_point
from maskednas.supernet.targets import COST_TARGETS
from maskednas.supernet.user_model import ModelSpaceConfig, UserModel

RESNET20 = "benchmarks.cifar_resnet:resnet20"


def measured_peak_kib(model: nn.Module, x: torch.Tensor, layer_types) -> float:
    """The largest input + output of any conv, linear or norm layer, as the tensors are."""
    sizes, hooks = [], []
    for m in model.modules():
        if isinstance(m, layer_types):
            hooks.append(m.register_forward_hook(
                lambda m, args, out: sizes.append((args[0].numel() + out.numel()) * out.element_size())))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return max(sizes) / 1024


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    net = UserModel(ModelSpaceConfig(source=RESNET20), 3, 10, 32)
    randomize(net, torch.Generator().manual_seed(0))
    net.eval()
    target = COST_TARGETS.get("peak_memory_kib")(net, batch=8)
    half = {g: c // 2 for g, c in net.full_widths().items()}  # a reachable goal: every group halved
    goal = target.of(net.architecture(net.derive_ops(), half))
    assert goal < 0.75 * target.dense()
    derivation = derive(net, budget("peak_memory_kib", net, goal, batch=8))
    folder = tmp_path_factory.mktemp("export") / "export"
    save_export(folder, slim(net, derivation).eval(), {}, {}, onnx=False)
    return net, target, goal, derivation, load(folder, trust_source=["benchmarks"])


def test_the_figure_is_the_exported_networks_own_peak(pruned):
    net, target, _, derivation, model = pruned
    types = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)
    assert target.of(derivation.arch) == pytest.approx(measured_peak_kib(model, torch.zeros(8, 3, 32, 32), types), rel=1e-12)
    dense = net.dense_architecture()
    assert target.of(dense) == pytest.approx(measured_peak_kib(net.teacher[0], torch.zeros(8, 3, 32, 32), types), rel=1e-12)


def test_derivation_meets_a_peak_memory_target(pruned):
    _, target, goal, derivation, _ = pruned
    assert abs(target.of(derivation.arch) / goal - 1) <= 0.03


def test_the_peak_is_differentiable_in_the_masks(pruned):
    net, target, *_ = pruned
    value = target.value(*discrete_point(net))
    grads = torch.autograd.grad(value, [m.logits for m in net.masks.values()], allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_spaces_without_layer_shapes_refuse_it():
    with pytest.raises(ConfigError, match="'macro' space has no per-layer activation shapes"):
        load_config("digits", ["search.targets.peak_memory_kib.value=10"])


def test_a_run_with_the_target_reports_it_everywhere(tmp_path):
    """The pipeline names no target: the penalty, derivation, TensorBoard, the summary and the
    metrics carry the peak-memory target through the registry alone."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from maskednas.pipeline import run
    cfg = load_config("prune_model", [f"model.source={RESNET20}", "data.name=digits",
                                      "search.epochs=2", "search.warmup_epochs=1", "finetune.epochs=0",
                                      "search.targets={peak_memory_kib: {fraction: 0.5}}",
                                      f"out_dir={tmp_path}", "threads=2"])
    lines = []
    metrics = run(cfg, tmp_path / "run", ["search", "derive"], report=lines.append)
    figures = metrics["cost_targets"]["peak_memory_kib"]
    assert figures["target"] == metrics["target_peak_memory_kib"] == pytest.approx(0.5 * figures["dense"])
    assert figures["exported"] < figures["dense"] and metrics["target_macs"] is None
    assert any(line.startswith("targets: ") and "KiB" in line for line in lines)
    assert any("peak activation memory" in line and "(target" in line for line in lines)
    tags = EventAccumulator(str(tmp_path / "run")).Reload().Tags()["scalars"]
    assert {"cost/expected_peak_memory_kib", "cost/discrete_peak_memory_kib",
            "cost/target_peak_memory_kib", "cost/discrete_macs"} <= set(tags)
