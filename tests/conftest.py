"""Shared fixtures: tiny search spaces that run in milliseconds on a CPU."""
from __future__ import annotations

import os

import pytest
import torch

from maskednas.supernet import MacroSpaceConfig, MacroSupernet, StageSpec

# two threads per test process, one per pytest-xdist worker when they share two cores; child
# processes (a fresh interpreter loading an export, the command) inherit it through the
# environment: outputs compared bit for bit across processes need the same thread count
THREADS = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
os.environ["OMP_NUM_THREADS"] = str(THREADS)
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _process_settings():
    """A run sets the config's thread count and flushes subnormal floats for the whole process
    (pipeline.setup.apply_threads); each test starts from the same settings again."""
    yield
    torch.set_num_threads(THREADS)
    torch.set_flush_denormal(False)


def tiny_space(candidates=None, first_candidates=None, **kw) -> MacroSpaceConfig:
    cands = candidates or ["conv_3x3", "sep_conv_3x3", "mbconv_k3_e3", "zero"]
    firsts = first_candidates or [c for c in cands if c != "zero"]
    return MacroSpaceConfig(stem_channels=kw.get("stem", 6),
                            stages=kw.get("stages", [StageSpec(6, 2, 1), StageSpec(10, 2, 2)]),
                            candidates=cands, first_candidates=firsts)


def randomize_norms(net: torch.nn.Module, generator: torch.Generator) -> None:
    """BatchNorm affine parameters away from (1, 0): a slimmer that took gamma/beta from the
    wrong channels would go unnoticed with the defaults (measured: 7e-9 against 0.41)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.5)


def randomize(net: MacroSupernet, seed: int = 0, batches: int = 3, size: int = 8) -> None:
    """Every parameter and buffer away from its default: random alpha and mask logits (about
    half the channels below zero), BN affine parameters, and BN running statistics gathered in
    training mode, so equivalence checks exercise every term."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 2)
    randomize_norms(net, g)
    net.train()
    with torch.no_grad():
        for _ in range(batches):
            dtype = next(net.parameters()).dtype
            net(torch.randn(16, net.in_channels, size, size, generator=g, dtype=dtype))
    net.eval()


@pytest.fixture
def tiny_net() -> MacroSupernet:
    torch.manual_seed(0)
    net = MacroSupernet(tiny_space(), in_channels=1, num_classes=10, input_size=8)
    randomize(net)
    return net


RUN_BASICS = ["data.batch_size=128", "log_every=2", "search.epochs=3", "search.warmup_epochs=1",
              "finetune.epochs=1"]
SMALL_MACRO = [
    "macro.stem_channels=6",
    "macro.stages=[{channels: 6, layers: 2, stride: 1}, {channels: 10, layers: 2, stride: 2}]",
    "macro.candidates=[conv_3x3, sep_conv_3x3, mbconv_k3_e3, zero]",
    "macro.first_candidates=[conv_3x3, sep_conv_3x3, mbconv_k3_e3]",
]
SMALL_RUN = [*RUN_BASICS, *SMALL_MACRO]  # a digits run on a tiny macro space


def small_config(tmp_path, *overrides: str):
    """A digits run on a tiny space (the macro one unless the overrides choose another): a
    search epoch takes well under a second."""
    from maskednas.pipeline.config import load_config

    space = [*RUN_BASICS] if any(o.startswith("space=") for o in overrides) else [*SMALL_RUN]
    return load_config(None, [*space, f"out_dir={tmp_path}", *overrides])


def interrupt_at(searcher, epoch, action):
    """Call `action(searcher)` when `searcher` is about to run `epoch`."""
    run_epoch = searcher.run_epoch

    def patched(bar):
        if searcher.epoch == epoch:
            action(searcher)
        return run_epoch(bar)

    searcher.run_epoch = patched


def crash(_):
    raise KeyboardInterrupt


def interrupted_and_resumed(cfg, run_dir, epoch: int):
    """A search of `cfg` in `run_dir` stopped by Ctrl-C before `epoch`, then resumed (as a new
    process would) and run to its end: the resumed searcher."""
    from maskednas import parallel
    from maskednas.pipeline.setup import prepare_search
    from maskednas.search.checkpoint import load_checkpoint

    first = prepare_search(cfg, run_dir)
    interrupt_at(first, epoch, crash)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    parallel.barrier()  # under torchrun: rank 0 has written the checkpoint the ranks resume from
    assert load_checkpoint(first.checkpoint_path, "search")["epoch"] == epoch
    second = prepare_search(cfg, run_dir)
    second.resume()
    assert second.epoch == epoch
    second.run()
    return second


def synthetic_ms(part, widths) -> float:
    """A made-up latency, growing with every width: 0.01 ms a part, more for ops with more
    channel groups, plus 1e-3 ms per channel."""
    return 0.01 * len(part.groups) + 1e-3 * sum(widths)


def synthetic_table(net, ms=synthetic_ms, grid_points: int = 3, channels_last: bool = False):
    """A latency table of `net` on this machine's CPU (torch, batch 1) with made-up numbers:
    what a measured table holds, without timing anything."""
    import itertools

    from maskednas.latency import LatencyTable, table_meta
    from maskednas.latency.table import TableEntry, grid_widths

    parts = net.latency_parts()
    table = LatencyTable(table_meta(net.space_name, parts, torch.device("cpu"), "torch", 1,
                                    channels_last))
    for part in parts:
        grid = [grid_widths(size, grid_points) for size in part.sizes]
        values = torch.tensor([ms(part, w) for w in itertools.product(*grid)], dtype=torch.float64)
        table.entries[part.key] = TableEntry(grid, values.reshape([len(g) for g in grid]).tolist())
    return table


def maskednas_main(argv: list[str]) -> None:
    """The `maskednas` command run in this process, as `python -m maskednas ARGS` runs it."""
    import runpy
    import sys
    saved = sys.argv
    sys.argv = ["maskednas", *argv]
    try:
        runpy.run_module("maskednas", run_name="__main__", alter_sys=False)
    finally:
        sys.argv = saved
