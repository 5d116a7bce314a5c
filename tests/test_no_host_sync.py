"""No host syncs where the hot loop runs: batches with augmentation, and whole search steps.
CUDA only (`torch.cuda.set_sync_debug_mode("error")` raises on any synchronising call); skipped
without a GPU."""
import pytest
import torch

from conftest import small_config
from maskednas.datasource import DeviceLoader
from maskednas.pipeline.setup import prepare_search

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def sync_errors():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    yield
    torch.cuda.set_sync_debug_mode("default")


@cuda
def test_augmented_batches_reach_the_gpu_without_a_sync(sync_errors):
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    loader = DeviceLoader(x, torch.arange(64), 16, (0.5,) * 3, (0.25,) * 3, device="cuda",
                          crop_padding=2, hflip=True, cutout=3, seed=0)
    batches = [b for b in loader]
    assert len(batches) == 4 and batches[0][0].is_cuda


@cuda
@pytest.mark.parametrize("space", [[], ["space=darts", "darts.channels=4", "darts.cells=3",
                                        "darts.stem_multiplier=2"]])
def test_search_steps_do_not_sync(tmp_path, space):
    searcher = prepare_search(small_config(tmp_path, "device=cuda", "search.warmup_epochs=0", *space),
                              tmp_path)
    steps_without_sync(searcher)


def steps_without_sync(searcher, steps: int = 3) -> None:
    """Architecture and weight steps with every synchronising call an error."""
    batches = list(zip(searcher.train_loader, searcher.arch_loader))[:steps]
    searcher.net.train()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for train, val in batches:
            searcher.arch_step(train, val)
            searcher.weight_step(*train)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@cuda
def test_search_steps_with_a_latency_target_do_not_sync(tmp_path):
    """The interpolated table (searchsorted, index_select on the device) reads nothing back."""
    from conftest import synthetic_table
    from maskednas.supernet import MacroSupernet

    cfg = small_config(tmp_path, "device=cuda", "search.warmup_epochs=0",
                       "search.targets={latency_ms: {fraction: 0.5}}")
    path = tmp_path / "table.json"
    synthetic_table(MacroSupernet(cfg.space_config, 1, 10, 8)).save(path)
    cfg.latency.table = str(path)
    steps_without_sync(prepare_search(cfg, tmp_path))


@cuda
def test_search_steps_on_a_users_network_do_not_sync(tmp_path):
    """The `model` space: gate vectors gathered from index buffers on the device, the compiled
    cost polynomial, sync-free one-hot selection."""
    cfg = small_config(tmp_path, "space=model", "model.source=benchmarks.cifar_resnet:resnet20",
                       "device=cuda", "search.warmup_epochs=0")
    steps_without_sync(prepare_search(cfg, tmp_path))


@cuda
def test_sandwich_steps_do_not_sync(tmp_path):
    """The largest, the smallest and random subnets each step: keep vectors cached on the
    device, one-hot op weights compared on the device."""
    import itertools

    from maskednas.supernet.subnets import Subnet, SubnetSpace
    searcher = prepare_search(small_config(tmp_path, "device=cuda", "search.strategy=sandwich",
                                           "search.targets={}"), tmp_path)
    space = SubnetSpace(searcher.net, searcher.cfg.search.sandwich.width_fractions)
    for i in range(max(len(c) for c in space.width_choices.values())):  # every width's keep vector once
        space.activate(Subnet(space.largest().ops, {g: c[min(i, len(c) - 1)]
                                                   for g, c in space.width_choices.items()}))
    searcher.net.soft_mask()
    batches = list(itertools.islice(searcher.train_loader, 3))
    searcher.net.train()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in batches:
            searcher.sandwich_step(space, x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")
