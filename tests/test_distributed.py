"""Runs over two processes (gloo on the CPU), spawned by the tests: ranks stay identical, a
2-rank step equals a 1-process step on the same global batch, evaluation counts every test image
once, and `torchrun train.py` writes one run, survives a dead rank and resumes."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from maskednas import parallel
from conftest import SMALL_RUN, interrupted_and_resumed, small_config
from maskednas.datasource import DeviceLoader, load_dataset
from maskednas.export import build
from maskednas.pipeline.setup import TrainingContext, prepare_search
from maskednas.search.checkpoint import load_checkpoint
from maskednas.training.finetune import evaluate

ROOT = Path(__file__).resolve().parents[1]


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(torch.relu(self.conv1(x)))


class PlainNet(nn.Module):
    """No batch statistics: a step cannot depend on how the batch is split over ranks."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.block = Residual(8)  # a keep/skip choice: alpha
        self.down = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x):
        x = torch.relu(self.block(torch.relu(self.stem(x))))
        return self.fc(torch.relu(self.down(x)).mean((2, 3)))


def plain_net(num_classes: int = 10, in_channels: int = 1) -> PlainNet:
    return PlainNet(num_classes, in_channels)


# -- two ranks spawned in-process -----------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, fn, args) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    parallel.start(torch.device("cpu"))
    try:
        fn(rank, *args)
    finally:
        parallel.stop()


def spawn(fn, *args, world: int = 2) -> None:
    """`fn(rank, *args)` in `world` processes joined by gloo, as torchrun would start them."""
    mp.spawn(_rank_main, args=(world, free_port(), fn, args), nprocs=world)


def _search(rank: int, cfg, run_dir: Path, out: Path) -> None:
    searcher = prepare_search(cfg, run_dir)
    searcher.run()
    torch.save({"net": searcher.net.state_dict(), "a_opt": searcher.architect.optimizer.state_dict(),
                "w_opt": searcher.w_opt.state_dict(), "history": searcher.history},
               out / f"rank{rank}.pt")


@pytest.mark.parametrize("order", [1, 2])
def test_ranks_hold_bitwise_identical_state_after_search_epochs(tmp_path, order):
    """Weights, alpha, masks, BN statistics and both optimisers' states, after a warm-up epoch
    and an epoch of bilevel steps (BatchNorm on each rank's own shard)."""
    cfg = small_config(tmp_path, "search.epochs=2", f"search.order={order}")
    spawn(_search, cfg, tmp_path / "run", tmp_path)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert a["history"] == b["history"]
    for name, tensor in a["net"].items():
        assert torch.equal(tensor, b["net"][name]), name
    for opt in ("a_opt", "w_opt"):
        for key, state in a[opt]["state"].items():
            for field, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(b[opt]["state"][key][field]))
    # rank 0 alone wrote the checkpoint, and it is the state both ranks hold
    saved = load_checkpoint(tmp_path / "run" / "search.pt", "search")
    assert all(torch.equal(t, saved["model"][n]) for n, t in a["net"].items())

    # one process resumes what two ranks wrote, on the same global batches
    resumed = prepare_search(small_config(tmp_path, "search.epochs=3", f"search.order={order}"),
                             tmp_path / "run")
    resumed.resume()
    assert torch.equal(resumed.train_loader.generator.get_state(),
                       saved["loaders"]["train"]["generator"])
    resumed.run()
    assert resumed.history[:2] == a["history"] and resumed.history[2]["epoch"] == 2


def _straight_and_resumed(rank: int, tmp_path: Path, out: Path) -> None:
    straight = prepare_search(small_config(tmp_path, "search.epochs=3"), tmp_path / "straight")
    straight.run()
    resumed = interrupted_and_resumed(small_config(tmp_path, "search.epochs=3"),
                                      tmp_path / "resumed", 2)
    torch.save({"straight": straight.net.state_dict(), "resumed": resumed.net.state_dict(),
                "histories": (straight.history, resumed.history)}, out / f"rank{rank}.pt")


def test_a_resumed_two_rank_search_equals_the_uninterrupted_one(tmp_path):
    spawn(_straight_and_resumed, tmp_path, tmp_path)
    for rank in (0, 1):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert r["histories"][0] == r["histories"][1]
        for name, tensor in r["straight"].items():
            assert torch.equal(tensor, r["resumed"][name]), name


def _random_streams(rank: int, cfg, run_dir: Path, out: Path) -> None:
    prepare_search(cfg, run_dir).run()
    draw = torch.rand(8)  # what a dropout or drop-path mask after the last save would draw
    resumed = prepare_search(cfg, run_dir)
    resumed.resume()
    torch.save({"draw": draw, "resumed_draw": torch.rand(8)}, out / f"rank{rank}.pt")


def test_each_rank_draws_its_own_random_stream_and_resumes_it(tmp_path):
    """Dropout and drop-path masks differ between ranks (their shards are different images),
    and the checkpoint keeps every rank's stream: a resume draws what the run would have."""
    spawn(_random_streams, small_config(tmp_path), tmp_path / "run", tmp_path)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert not torch.equal(a["draw"], b["draw"])
    assert torch.equal(a["draw"], a["resumed_draw"]) and torch.equal(b["draw"], b["resumed_draw"])
    assert len(load_checkpoint(tmp_path / "run" / "search.pt", "search")["rng"]) == 2


def _first_step(rank: int, cfg, run_dir: Path, out: Path) -> None:
    searcher = prepare_search(cfg, run_dir)
    net = searcher.net
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    train_batch, arch_batch = next(iter(searcher.train_loader)), next(iter(searcher.arch_loader))
    searcher.arch_step(train_batch, arch_batch)
    searcher.weight_step(*train_batch)  # leaves the arch gradients alone
    torch.save({"delta": {n: p.detach() - before[n] for n, p in net.named_parameters()},
                "grad": {n: p.grad for n, p in net.named_parameters()},
                "arch": [n for n, p in net.named_parameters()
                         if any(p is q for q in net.arch_parameters())],
                "labels": (train_batch[1], arch_batch[1])}, out / f"rank{rank}.pt")


@pytest.mark.parametrize("order", [1, 2])
def test_first_updates_of_two_ranks_equal_one_process_on_the_global_batch(tmp_path, order):
    """A network without batch statistics: the first architecture and weight updates of two
    ranks, each on half of every batch, equal one process's on the whole batch."""
    cfg = small_config(tmp_path, "space=model", f"model.source={__name__}:plain_net",
                       "data.batch_size=32", "search.warmup_epochs=0", f"search.order={order}",
                       "model.mask_init=0.5", "model.keep_init=0.5")
    spawn(_first_step, cfg, tmp_path / "two", tmp_path)
    _first_step("single", cfg, tmp_path / "one", tmp_path)
    r0, r1, one = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
                   for r in (0, 1, "single"))
    # distinct halves of the same global batches
    for i in range(2):
        assert len(r0["labels"][i]) == len(r1["labels"][i]) == 16
        assert torch.equal(torch.cat([r0["labels"][i], r1["labels"][i]]), one["labels"][i])
    assert one["arch"] and len(one["arch"]) < len(one["delta"])  # alpha, masks and weights
    for name, delta in one["delta"].items():
        assert torch.equal(r0["delta"][name], r1["delta"][name]), name
        assert delta.abs().max() > 0 and (r0["delta"][name] - delta).abs().max() <= 1e-5, name
        # Adam's first step is ~lr * sign(gradient): the gradients themselves must agree too
        torch.testing.assert_close(r0["grad"][name], one["grad"][name], rtol=1e-4, atol=1e-7,
                                   msg=name)


def _evaluate(rank: int, x, y, model, out: Path) -> None:
    loader = DeviceLoader(x, y, 8, [0.5], [0.25], shuffle=False, drop_last=False,
                          shard=(rank, 2))
    seen = torch.cat([images[:, 0, 0, 0] for images, _ in loader])
    torch.save({"seen": seen, "metrics": evaluate(model, loader)}, out / f"rank{rank}.pt")


def test_evaluation_counts_every_test_image_exactly_once(tmp_path):
    """37 images in batches of 8 over 2 ranks: the last batch (5) splits 3 + 2."""
    data = load_dataset("digits")
    x, y = data.x_test[:37].clone(), data.y_test[:37]
    x[:, :, 0, 0] = torch.arange(37, dtype=x.dtype).view(-1, 1)  # each image carries its index
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    spawn(_evaluate, x, y, model, tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    index = ((torch.cat([r0["seen"], r1["seen"]]) * 0.25 + 0.5) * 255).round().long()
    assert sorted(index.tolist()) == list(range(37))
    single = evaluate(model, DeviceLoader(x, y, 8, [0.5], [0.25], shuffle=False, drop_last=False))
    assert r0["metrics"] == r1["metrics"]
    assert r0["metrics"]["acc"] == single["acc"] and round(single["acc"] * 37) == single["acc"] * 37
    assert r0["metrics"]["loss"] == pytest.approx(single["loss"], rel=1e-6)


def test_sync_batchnorm_trains_as_batchnorm_in_one_process_and_converts_back(tmp_path):
    """sync_bn=true: SyncBatchNorm layers during the search (the same numbers as BatchNorm in
    one process), plain BatchNorm layers with their tags again for derivation."""
    plain = prepare_search(small_config(tmp_path, "search.epochs=2"), tmp_path / "plain")
    synced = prepare_search(small_config(tmp_path, "search.epochs=2", "sync_bn=true"),
                            tmp_path / "synced")
    norms = [m for m in synced.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    plain.run()
    synced.run()
    for (name, a), b in zip(plain.net.state_dict().items(), synced.net.state_dict().values()):
        assert torch.equal(a, b), name
    back = parallel.plain_batchnorm(synced.net)
    for m, original in zip(back.modules(), plain.net.modules()):
        assert type(m) is type(original)
        assert getattr(m, "channel_roles", None) == getattr(original, "channel_roles", None)

    # fine-tuning with sync_bn: the same numbers, plain BatchNorm layers back for the export
    tuned = []
    for cfg in (plain.cfg, synced.cfg):
        data = load_dataset("digits")
        ctx = TrainingContext(cfg, data, torch.device("cpu"))
        torch.manual_seed(0)
        tuned.append(ctx.train(build(plain.net.dense_architecture(ctx.meta.mean, ctx.meta.std))))
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in tuned[1].modules())
    for (name, a), b in zip(tuned[0].state_dict().items(), tuned[1].state_dict().values()):
        assert torch.equal(a, b), name


# -- torchrun train.py ----------------------------------------------------------------------------
def torchrun(*args: str, ranks: int = 2, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
               f"--master_port={free_port()}", "train.py", *SMALL_RUN, "threads=1", *args]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def finished(process: subprocess.Popen, timeout: float = 120) -> str:
    out, _ = process.communicate(timeout=timeout)
    return out


def test_torchrun_writes_one_run_directory_with_one_export(tmp_path):
    p = torchrun(f"out_dir={tmp_path}", "name=two")
    out = finished(p)
    assert p.returncode == 0, out[-3000:]
    run = tmp_path / "two"
    assert sorted(f.name for f in run.iterdir() if not f.name.startswith("events")) == [
        "config.yaml", "export", "search.pt", "summary-export.json"]
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # rank 0's TensorBoard only
    assert out.count("search done in") == 1 and out.count("exported to") == 1  # rank 0 speaks
    assert out.count("Cosine annealing scheduler will have no effect") <= 1  # timm's, rank 0's
    from maskednas.export import load
    model = load(run / "export")
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=63", "data.batch_size=63 is the global batch, split over 2 ranks: it must "
                           "be a multiple of 2, e.g. 62 or 64"),
    ("sync_bn=true", "sync_bn=true under torchrun needs GPUs"),
    ("device=cuda:1", "each rank takes the GPU of its LOCAL_RANK; use device=cuda or auto"),
])
def test_torchrun_refuses_what_ranks_cannot_run_before_writing(tmp_path, override, message):
    p = torchrun(f"out_dir={tmp_path}", "name=bad", override)
    out = finished(p)
    # every rank checks; torchrun may stop the others once the first has failed
    said = [line for line in out.splitlines() if line.startswith("error: rank ")]
    assert p.returncode != 0 and said and all(message in line for line in said), out[-3000:]
    assert not (tmp_path / "bad").exists()


def _worker_of_rank(launcher: int, rank: int) -> int:
    """The pid of the torchrun worker with RANK=`rank` among the launcher's children."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no worker with RANK={rank} among {children}")


def test_a_dead_rank_ends_the_run_naming_it_and_the_resumed_run_completes(tmp_path):
    run = tmp_path / "killed"
    p = torchrun(f"out_dir={tmp_path}", "name=killed", "search.epochs=30")
    deadline = time.time() + 90
    while not (run / "search.pt").is_file():
        assert p.poll() is None and time.time() < deadline, p.stdout.read()[-3000:]
        time.sleep(0.2)
    os.kill(_worker_of_rank(p.pid, 1), signal.SIGKILL)
    out = finished(p)
    assert p.returncode != 0
    root_cause = out[out.index("Root Cause"):]
    assert "rank      : 1" in root_cause and "SIGKILL" in root_cause, out[-3000:]
    epoch = load_checkpoint(run / "search.pt", "search")["epoch"]  # intact
    assert 1 <= epoch < 30

    p = torchrun("--resume", str(run), "search.epochs=4" if epoch < 4 else f"search.epochs={epoch}")
    out = finished(p)
    assert p.returncode == 0, out[-3000:]
    assert f"resumed {run} at epoch {epoch}" in out
    assert (run / "export" / "model.safetensors").is_file()
