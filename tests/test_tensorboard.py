"""A short search's event file holds every documented tag, with the logged values."""
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import small_config
from maskednas.pipeline.config import flat_dict, to_dict
from maskednas.pipeline.setup import prepare_search
from maskednas.search.tensorboard_log import SearchLogger


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tb")
    cfg = small_config(tmp)
    searcher = prepare_search(cfg, tmp, logger_factory=SearchLogger)
    searcher.run()
    searcher.logger.hyperparameters(flat_dict(to_dict(cfg)), {"test_acc": 0.5})
    searcher.logger.close()
    events = EventAccumulator(str(tmp), size_guidance={"scalars": 0, "histograms": 0,
                                                       "images": 0, "tensors": 0}).Reload()
    return searcher, events


def values(events, tag):
    return [e.value for e in events.Scalars(tag)]


def test_op_probabilities_per_layer_and_op(logged_run):
    searcher, events = logged_run
    epochs = searcher.cfg.search.epochs
    for layer in searcher.net.layers:
        series = [values(events, f"alpha/{layer.name}/{op}") for op in layer.names]
        assert all(len(s) == epochs for s in series)
        for step in range(epochs):  # a distribution at every epoch
            assert sum(s[step] for s in series) == pytest.approx(1.0, abs=1e-5)
    assert "custom_scalars__config__" in events.Tags()["tensors"]  # the per-layer layout
    assert "alpha/heatmap" in events.Tags()["images"]


def test_masks_channels_and_cost_against_target(logged_run):
    searcher, events = logged_run
    tags = events.Tags()
    for group, mask in searcher.net.masks.items():
        assert f"mask/{group}" in tags["histograms"]
        kept = values(events, f"channels/{group}")
        assert all(0 <= k <= mask.channels for k in kept)
    assert values(events, "cost/target_macs") == [pytest.approx(searcher.targets["macs"])] * 3
    assert values(events, "cost/expected_macs")[-1] == pytest.approx(
        searcher.history[-1]["expected_macs"], rel=1e-6)
    assert values(events, "cost/discrete_macs")[-1] == pytest.approx(
        searcher.history[-1]["discrete_macs"], rel=1e-6)
    assert values(events, "cost/mask_shift") == pytest.approx(  # the target hold's offsets
        [h.get("mask_shift", 0.0) for h in searcher.history])


def test_losses_accuracies_text_and_hparams(logged_run):
    searcher, events = logged_run
    for tag, key in (("loss/train", "train_loss"), ("loss/arch", "arch_loss"),
                     ("acc/train", "train_acc"), ("acc/arch", "arch_acc")):
        assert values(events, tag) == pytest.approx([h[key] for h in searcher.history], rel=1e-6)
    assert "architecture/text_summary" in events.Tags()["tensors"]
    assert "_hparams_/experiment" in events.PluginTagToContent("hparams")
    assert values(events, "hparam/test_acc") == [0.5]


def test_gradient_norms_per_architecture_step_and_decisions_per_epoch(logged_run):
    """The loss's and the penalty's gradient norms at every architecture step (the first epoch
    is warm-up: weights only), and the decisions each epoch changed."""
    searcher, events = logged_run
    steps, warmup = len(searcher.train_loader), searcher.cfg.search.warmup_epochs
    for part in ("loss", "penalty"):
        for tag in (f"arch/grad_norm/{part}", f"arch/grad_norm/{part}/op_logits",
                    f"arch/grad_norm/{part}/mask_logits"):
            logged = events.Scalars(tag)
            assert [e.step for e in logged] == list(range(warmup * steps, searcher.step))
            assert all(e.value >= 0 for e in logged) and any(e.value > 0 for e in logged)
            mean = sum(e.value for e in logged[-steps:]) / steps
            assert mean == pytest.approx(searcher.history[-1][tag.removeprefix("arch/")], rel=1e-5)
    for tag in ("decisions_flipped", "channels_flipped", "decision_margin_std"):
        assert values(events, f"arch/{tag}") == pytest.approx([h[tag] for h in searcher.history])
    assert searcher.history[0]["decisions_flipped"] == 0 == searcher.history[0]["channels_flipped"]


def plain_net(num_classes: int = 10, in_channels: int = 1) -> torch.nn.Module:
    """conv-BN-ReLU twice, pool, linear: no residual block, so no keep/skip choice."""
    from torch import nn
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def test_a_network_without_choices_logs_masks_and_no_heatmap(tmp_path):
    from maskednas.supernet.user_model import ModelSpaceConfig, UserModel
    net = UserModel(ModelSpaceConfig(source="test_tensorboard:plain_net"), 1, 10, 8)
    assert net.choice_rows(net.op_weights()) == {}
    logger = SearchLogger(tmp_path, net, {"macs": 1000.0})
    logger.architecture(net, 0, {"discrete_macs": 2000.0})
    logger.close()
    events = EventAccumulator(str(tmp_path)).Reload()
    assert {f"channels/{g}" for g in net.masks} <= set(events.Tags()["scalars"])
    assert "alpha/heatmap" not in events.Tags()["images"]
