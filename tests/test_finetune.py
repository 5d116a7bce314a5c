"""Fine-tuning switches: from scratch, knowledge distillation, EMA, BN recalibration, drop-path."""
import copy

import pytest
import torch

from maskednas.derive import derive
from maskednas.export.compact import CompactLayer, set_drop_path
from maskednas.derive.slim import slim
from maskednas.pipeline.config import FinetuneConfig
from maskednas.training.finetune import evaluate, finetune, recalibrate_batchnorm
from maskednas.datasource import load_dataset


class Batches:
    """A few batches of real digits (normalised), a fixed list so every epoch sees the same."""

    def __init__(self, n=4):
        data = load_dataset("digits")
        x = (data.x_train[:16 * n].float() / 255 - 0.3) / 0.37
        self.batches = list(zip(x.split(16), data.y_train[:16 * n].split(16)))

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


@pytest.fixture
def compact(tiny_net):
    return slim(tiny_net, derive(tiny_net))


def test_from_scratch_reinitialises_every_layer(compact):
    before = copy.deepcopy(compact.state_dict())
    finetune(compact, FinetuneConfig(epochs=0, from_scratch=True), Batches())
    after = compact.state_dict()
    weights = [k for k in before if k.endswith("weight") and before[k].dim() > 1]
    assert weights and all(not torch.equal(before[k], after[k]) for k in weights)
    running = [k for k in before if k.endswith("running_var")]
    assert all(torch.equal(after[k], torch.ones_like(after[k])) for k in running)


def test_finetuning_lowers_the_training_loss(tiny_net):
    with torch.no_grad():
        for mask in tiny_net.masks.values():
            mask.logits.fill_(5.0)  # the full-width network
    compact = slim(tiny_net, derive(tiny_net))
    data = Batches()
    before = evaluate(compact, data)
    finetune(compact, FinetuneConfig(epochs=15, lr=0.05), data)
    after = evaluate(compact, data)
    assert after["loss"] < 0.7 * before["loss"] and after["acc"] > before["acc"] + 0.2


def test_adamw_takes_adam_s_first_step(compact):
    """finetune.optimizer=adamw: one batch moves every weight with a gradient by lr (Adam's
    first step is lr times the gradient's sign), not by SGD's lr times the gradient."""
    data = Batches(n=1)
    weights = [(n, p) for n, p in compact.named_parameters() if p.dim() > 1]
    before = {n: p.detach().clone() for n, p in weights}
    finetune(compact, FinetuneConfig(epochs=1, optimizer="adamw", lr=1e-3, weight_decay=0.0), data)
    steps = torch.cat([(p.detach() - before[n]).abs().flatten() for n, p in weights])
    moved = steps[steps > 0]
    assert len(moved) > 0.9 * len(steps)
    assert torch.allclose(moved, torch.full_like(moved, 1e-3), rtol=0.05)


def test_distillation_uses_the_teacher(compact, tiny_net):
    a, b = copy.deepcopy(compact), copy.deepcopy(compact)
    cfg = FinetuneConfig(epochs=1, kd_weight=0.9)
    torch.manual_seed(0)
    finetune(a, cfg, Batches(), teacher=tiny_net)
    with torch.no_grad():  # another teacher, the same student and data: other weights
        for p in tiny_net.weight_parameters():
            p.mul_(0.5)
    torch.manual_seed(0)
    finetune(b, cfg, Batches(), teacher=tiny_net)
    assert not torch.equal(a.stem[0].weight, b.stem[0].weight)


def test_ema_returns_the_averaged_copy(compact):
    model = finetune(compact, FinetuneConfig(epochs=2, ema_decay=0.9), Batches())
    assert model is not compact
    assert not torch.equal(model.stem[0].weight, compact.stem[0].weight)


def test_batchnorm_recalibration_matches_the_data_statistics(compact):
    data = Batches(n=2)
    compact.eval()
    recalibrate_batchnorm(compact, data)
    bn = compact.stem[1]
    stem_out = torch.cat([compact.stem[0](x) for x, _ in data])
    assert torch.allclose(bn.running_mean, stem_out.mean((0, 2, 3)), atol=1e-5)
    assert bn.momentum == 0.1 and not compact.training


def test_drop_path_on_residual_layers_drops_their_branches_in_training_only(compact):
    residual = [i for i, m in enumerate(compact.layers) if isinstance(m, CompactLayer) and m.residual]
    assert residual
    without = copy.deepcopy(compact)
    for i in residual:
        without.layers[i] = torch.nn.Identity()
    x = torch.randn(8, 1, 8, 8)
    set_drop_path(compact, 1.0)  # every residual branch dropped: the layers become identities
    compact.eval()
    with torch.no_grad():
        assert not torch.allclose(compact(x), without.eval()(x))  # eval never drops
        compact.train(), without.train()
        torch.testing.assert_close(compact(x), without(x))
