"""DARTS' evaluation-training regularisers: drop-path on cell edges, the auxiliary head, cutout."""
import pytest
import torch
from timm.layers import DropPath

from maskednas.datasource.device_loader import DeviceLoader
from maskednas.export import build
from maskednas.derive import derive
from maskednas.export.compact import set_drop_path
from maskednas.training.auxiliary import AuxiliaryTap
from maskednas.pipeline.config import ConfigError, FinetuneConfig, load_config
from maskednas.training.finetune import finetune
from test_darts import set_genotype_alphas, tiny_darts

MIXED = {kind: [("sep_conv_3x3", 0), ("skip_connect", 1), ("skip_connect", 0), ("dil_conv_3x3", 2),
                ("max_pool_3x3", 1), ("skip_connect", 3), ("avg_pool_3x3", 4), ("sep_conv_5x5", 2)]
         for kind in ("normal", "reduce")}


def cell_model():
    torch.manual_seed(0)
    net = tiny_darts()
    set_genotype_alphas(net, MIXED)
    return build(derive(net).arch)


def batches(n=3, classes=5):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, classes, (8,), generator=g))
            for _ in range(n)]


def test_drop_path_drops_every_edge_but_identities_and_only_in_training():
    model = cell_model()
    calls = []
    for m in model.modules():
        if isinstance(m, DropPath):
            m.register_forward_hook(lambda mod, inp, out: calls.append(
                (inp[0].abs().flatten(1).sum(1) > 0) & (out.abs().flatten(1).sum(1) == 0)))
    x = torch.randn(64, 3, 8, 8)
    set_drop_path(model, 0.5)
    model.eval()
    with torch.no_grad():
        reference = model(x)
        assert not any(c.any() for c in calls)  # eval mode never drops
        set_drop_path(model, 0.0)
        assert torch.equal(model(x), reference)
        set_drop_path(model, 0.5)
        model.train()
        calls.clear()
        model(x)
    identity_edges = sum(e.op == "skip_connect" and e.stride == 1 for c in model.arch.cells for e in c.edges)
    all_edges = sum(len(c.edges) for c in model.arch.cells)
    assert identity_edges > 0 and len(calls) == all_edges - identity_edges
    dropped = torch.stack(calls).float().mean()  # samples zeroed per edge: about half
    assert 0.4 < float(dropped) < 0.6, float(dropped)


def test_finetune_schedules_drop_path_and_trains_the_auxiliary_head_without_exporting_it():
    model = cell_model()
    keys = set(model.state_dict())
    seen, logged = [], {}
    model.cells[0].register_forward_pre_hook(lambda m, i: seen.append(m.drop_path.drop_prob))

    class Logger:
        def scalars(self, values, step):
            logged[step] = values

    cfg = FinetuneConfig(epochs=4, lr=0.05, drop_path=0.2, aux_weight=0.4)
    finetune(model, cfg, batches(), logger=Logger())
    assert sorted(set(seen)) == pytest.approx([0.0, 0.05, 0.1, 0.15])  # DARTS: p * epoch / epochs
    assert all(0 < logged[e]["finetune/aux_loss"] < 10 for e in range(1, 5))
    assert logged[4]["finetune/aux_loss"] < logged[1]["finetune/aux_loss"]  # the head learns
    assert set(model.state_dict()) == keys  # nothing of the head is left in the model
    assert not any(m._forward_hooks for m in model.cells)
    assert all(m.drop_prob == 0.0 for m in model.modules() if isinstance(m, DropPath))


def test_auxiliary_head_reads_the_cell_at_two_thirds_depth():
    model = cell_model()
    tap = AuxiliaryTap(model, num_classes=5)
    model.train()
    model(torch.randn(2, 3, 8, 8))
    index = 2 * len(model.cells) // 3
    assert tap.features.shape[1] == model.arch.cells[index].out_channels
    assert tap.logits().shape == (2, 5)
    model.eval()
    model(torch.randn(2, 3, 8, 8))
    assert tap.features is None  # evaluation keeps nothing


def test_cutout_zeroes_one_clipped_square_per_training_image():
    x = torch.full((200, 1, 8, 8), 255, dtype=torch.uint8)
    loader = DeviceLoader(x, torch.zeros(200, dtype=torch.long), 200, mean=(0.0,), std=(1.0,),
                          cutout=4, seed=3)
    images = next(iter(loader))[0][:, 0]
    zero = images == 0
    rows, cols = zero.any(2), zero.any(1)
    area = rows.sum(1) * cols.sum(1)
    assert torch.equal(zero.sum((1, 2)), area)  # the zeros form one rectangle
    assert int(area.min()) >= 4 and int(area.max()) == 16  # 4x4, clipped to >= 2x2 at borders
    assert bool((images[~zero] == 1).all())
    evaluation = DeviceLoader(x, torch.zeros(200, dtype=torch.long), 200, (0.0,), (1.0,),
                              shuffle=False, cutout=4)
    assert bool((next(iter(evaluation))[0] == 1).all())  # never on evaluation batches


def test_evaluation_regularisers_reject_bad_values():
    with pytest.raises(ConfigError, match="drop_path must be in"):
        load_config(None, ["space=darts", "finetune.drop_path=1.0"])
    with pytest.raises(ConfigError, match="auxiliary head to a cell network"):
        load_config(None, ["finetune.aux_weight=0.4"])
    with pytest.raises(ConfigError, match="cutout must be >= 0"):
        load_config(None, ["finetune.cutout=-1"])
