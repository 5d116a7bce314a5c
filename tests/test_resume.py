"""Interrupted searches resume exactly; a non-finite loss stops with the last good state kept."""
import math

from pathlib import Path

import pytest
import torch

from conftest import interrupt_at, interrupted_and_resumed, small_config
from maskednas.search.checkpoint import CheckpointError, load_checkpoint
from maskednas.training.losses import NonFiniteLossError
from maskednas.pipeline.setup import prepare_search


def test_resumed_search_equals_uninterrupted_search(tmp_path):
    cfg = small_config(tmp_path, "search.epochs=4")
    straight = prepare_search(cfg, tmp_path / "straight")
    straight.run()

    second = interrupted_and_resumed(cfg, tmp_path / "resumed", 2)
    for a, b in zip(straight.net.state_dict().values(), second.net.state_dict().values()):
        assert torch.equal(a, b)
    assert straight.history == second.history


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = small_config(tmp_path, "search.epochs=4")
    searcher = prepare_search(cfg, tmp_path)

    def poison(s):
        with torch.no_grad():
            s.net.stem[0].weight.fill_(math.nan)
    interrupt_at(searcher, 2, poison)
    with pytest.raises(NonFiniteLossError, match="last good state \\(epoch 2\\)") as e:
        searcher.run()
    assert str(searcher.checkpoint_path) in str(e.value)
    state = load_checkpoint(searcher.checkpoint_path, "search")
    assert state["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())

    resumed = prepare_search(cfg, tmp_path)
    resumed.resume()
    assert resumed.epoch == 2 and torch.isfinite(resumed.net.stem[0].weight).all()


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    cfg = small_config(tmp_path, "search.epochs=2", "search.warmup_epochs=0")
    searcher = prepare_search(cfg, tmp_path)
    searcher.run()
    good = searcher.checkpoint_path.read_bytes()

    def failing_write(path, data):  # the serialised checkpoint reaches the disk half-way
        with open(path, "wb") as f:
            f.write(bytes(data)[:100])
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Path, "write_bytes", failing_write)
    with pytest.raises(OSError, match=f"cannot write {searcher.checkpoint_path}: No space left"):
        from maskednas.search.checkpoint import save_checkpoint
        save_checkpoint(searcher.state_dict(), searcher.checkpoint_path)
    assert searcher.checkpoint_path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_corrupted_or_foreign_checkpoints_are_named(tmp_path):
    path = tmp_path / "search.pt"
    with pytest.raises(CheckpointError, match="no search checkpoint"):
        load_checkpoint(path, "search")
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(path, "search")
    torch.save({"kind": "subnet"}, path)
    with pytest.raises(CheckpointError, match="holds a 'subnet' checkpoint, expected 'search'"):
        load_checkpoint(path, "search")


def test_parameters_poisoned_by_the_last_step_of_an_epoch_are_never_saved(tmp_path):
    """Every loss of the epoch is finite (each is computed before its update); only the state
    after the last weight step is not. The save must not replace the good checkpoint with it."""
    cfg = small_config(tmp_path, "search.epochs=3")
    searcher = prepare_search(cfg, tmp_path)
    steps_per_epoch = len(searcher.train_loader)  # one pass of the weights; val batches cycle
    weight_step = searcher.weight_step

    def poisoned_last_step(x, y):
        out = weight_step(x, y)
        if searcher.epoch == 1 and searcher.step == 2 * steps_per_epoch - 1:
            with torch.no_grad():
                searcher.net.stem[0].weight[0, 0, 0, 0] = math.inf
        return out
    searcher.weight_step = poisoned_last_step
    with pytest.raises(NonFiniteLossError, match="non-finite parameters or optimiser state in "
                                                 "search epoch 2; the last good state \\(epoch 1\\)"):
        searcher.run()
    state = load_checkpoint(searcher.checkpoint_path, "search")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
