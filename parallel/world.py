"""The process group of a run started by torchrun, and the few facts every stage asks of it.

`python train.py` runs as a world of one: nothing is initialised and every function here is a
no-op. Under `torchrun` the environment names this process's RANK, LOCAL_RANK and WORLD_SIZE;
`start` joins the group with NCCL when the run's device is a GPU (one GPU per local rank) and
gloo otherwise. torch.distributed holds the group: this module keeps no state of its own.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import pickle
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def launched() -> bool:
    """Whether torchrun (or another launcher setting its variables) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def started() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if started() else 0


def size() -> int:
    return dist.get_world_size() if started() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes checkpoints, TensorBoard, exports and summaries."""
    return rank() == 0


def launched_rank() -> int:
    """The rank torchrun gave this process (also once the group is gone, for error messages)."""
    return int(os.environ.get("RANK", 0))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def rank_device(device: torch.device) -> torch.device:
    """This rank's device: under torchrun a GPU run uses the GPU of its local rank."""
    if launched() and device.type == "cuda":
        return torch.device("cuda", local_rank())
    return device


def start(device: torch.device, timeout_minutes: float = 30) -> None:
    """Join the torchrun group (a no-op outside torchrun or when already joined): NCCL for GPUs,
    gloo for CPUs. The timeout bounds how long a rank waits on one that is measuring a latency
    table or exporting before it gives up."""
    if not launched() or started():
        return
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timeout, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=timeout)


def stop() -> None:
    if started():
        dist.destroy_process_group()


def peer_lost(e: BaseException) -> bool:
    """Whether `e` is a collective that failed because another rank went away (gloo: the
    connection closed or reset; NCCL: its own error type)."""
    text = str(e)
    return isinstance(e, dist.DistError) or (
        isinstance(e, RuntimeError) and ("gloo" in text or "NCCL" in text)
        and any(w in text for w in ("Connection", "connection", "peer", "timed out", "Timeout")))


def barrier() -> None:
    if started():
        dist.barrier()


def broadcast(value: T) -> T:
    """Rank 0's `value` on every rank (any picklable object)."""
    if not started():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: T) -> list[T]:
    """Every rank's `value` (any picklable object), in rank order, on every rank."""
    if not started():
        return [value]
    out: list = [None] * size()
    dist.all_gather_object(out, value)
    return out


def fork_rng() -> None:
    """Give each rank its own stream of torch's random numbers, seeded from the stream all ranks
    share: dropout and drop-path then draw different masks for different shards of a batch
    rather than the same masks on every rank. Call it after the model's initial weights are
    drawn (they must be equal on every rank). A no-op in a world of one."""
    if size() > 1:
        shared = int(torch.randint(2**62, (1,)))
        torch.manual_seed(shared + rank())


def on_main(fn: Callable[[], T]) -> T:
    """`fn()` run by rank 0 alone; its result, or the exception it raised, on every rank: for
    work that one process does for all (measuring a latency table) and checks whose failure
    must end every rank with rank 0's message."""
    if not started():
        return fn()
    outcome: tuple[bool, object] = (True, None)
    if is_main():
        try:
            outcome = (True, fn())
        except Exception as e:  # noqa: BLE001: handed to every rank, raised there too
            outcome = (False, _picklable(e))
    ok, value = broadcast(outcome)
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first; the other ranks run it after rank 0 got through, or raise
    rank 0's exception: what rank 0 writes (a downloaded data set, a latency table) the others
    then read, and a bad input ends every rank with one message, none left waiting."""
    if not started():
        yield
        return
    if is_main():
        try:
            yield
        except Exception as e:
            broadcast((False, _picklable(e)))
            raise
        broadcast((True, None))
    else:
        ok, error = broadcast((True, None))
        if not ok:
            raise error  # type: ignore[misc]
        yield


def _picklable(e: Exception) -> Exception:
    """`e` itself when it can travel to the other ranks, else a RuntimeError with its text."""
    try:
        pickle.dumps(e)
        return e
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(e).__name__}: {e}")
