"""Batches from tensors that live on the training device, augmented there.

Small data sets fit on the device, so the loop never waits for a host-to-device copy or a
worker process. Shuffling and augmentation draw from a CPU `torch.Generator` whose state is
saved in checkpoints: a resumed run sees exactly the batches of an uninterrupted one, and a CPU
and a GPU run draw the same ones. The draws reach the device from pinned memory without blocking
(`to_device`): a copy from pageable memory would synchronise the GPU on every batch.

Under torchrun each rank holds the whole split and takes its `shard` of every batch: all ranks
draw the same order and the same augmentation for the whole (global) batch from the same
generator, and keep their rows. So the global batches, and the generator state a checkpoint
saves, do not depend on the number of ranks: a run resumed with another number of ranks sees
the batches it would have seen.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F


class Rows(NamedTuple):
    """This rank's rows [start, stop) of a global batch of `total` images."""
    start: int
    stop: int
    total: int

    @classmethod
    def of(cls, total: int, rank: int, ranks: int) -> Rows:
        """Contiguous, sizes differing by at most one (the first total % ranks get one more)."""
        base, extra = divmod(total, ranks)
        start = rank * base + min(rank, extra)
        return cls(start, start + base + (rank < extra), total)

    def pick(self, draws: torch.Tensor) -> torch.Tensor:
        """This rank's part of random draws made for the whole batch."""
        return draws[self.start:self.stop]


class DeviceLoader:
    """`batch_size` is the global batch: with `shard=(rank, ranks)` each rank yields its rows of
    every batch (training loaders: batch_size // ranks each; a last partial batch of an
    evaluation loader: as evenly as it splits, an empty part skipped)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, mean: Sequence[float],
                 std: Sequence[float], device: torch.device | str = "cpu", shuffle: bool = True,
                 crop_padding: int = 0, hflip: bool = False, drop_last: bool = True,
                 seed: int = 0, channels_last: bool = False, cutout: int = 0,
                 shard: tuple[int, int] = (0, 1)) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(x) == 0:
            raise ValueError("cannot load batches from an empty split")
        self.rank, self.ranks = shard
        self.device = torch.device(device)
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.batch_size = min(batch_size, len(x))
        if drop_last:  # equal parts, so that averaging the ranks' gradients weighs images equally
            self.batch_size -= self.batch_size % self.ranks
            if self.batch_size == 0:
                raise ValueError(f"a split of {len(x)} images cannot give each of {self.ranks} "
                                 f"ranks an image per batch")
        self.shuffle, self.drop_last = shuffle, drop_last
        self.crop_padding, self.hflip, self.cutout = crop_padding, hflip, cutout
        self.channels_last = channels_last
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(mean, device=self.device).view(shape)
        self.std = torch.tensor(std, device=self.device).view(shape)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = to_device(order, self.device)
        for i in range(len(self)):
            batch = order[i * self.batch_size:(i + 1) * self.batch_size]
            rows = Rows.of(len(batch), self.rank, self.ranks)
            if rows.start == rows.stop:
                continue
            idx = rows.pick(batch)
            yield self.transform(self.x[idx], rows), self.y[idx]

    def transform(self, x: torch.Tensor, rows: Rows | None = None) -> torch.Tensor:
        """Scale, augment (training loaders) and normalise the images `x`: rows `rows` of a
        batch (default: all of `x`), augmented as they are in the whole batch."""
        if x.dtype == torch.long:  # token ids (datasource/text.py): neither scaled nor augmented
            return x
        rows = rows or Rows(0, len(x), len(x))
        x = x.float().div_(255)
        if self.shuffle and self.crop_padding:
            x = random_crop(x, self.crop_padding, self.generator, rows)
        if self.shuffle and self.hflip:
            flip = rows.pick(torch.rand(rows.total, generator=self.generator) < 0.5)
            x = torch.where(to_device(flip, x.device).view(-1, 1, 1, 1), x.flip(3), x)
        x = (x - self.mean) / self.std
        if self.shuffle and self.cutout:
            x = cutout(x, self.cutout, self.generator, rows)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on `device` without a host sync: staged in pinned memory and copied
    asynchronously (the caching host allocator keeps the buffer alive until the copy is done)."""
    if device.type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator,
                rows: Rows | None = None) -> torch.Tensor:
    """Per-image random crop after zero padding (the CIFAR augmentation), as one gather; `rows`:
    which rows of a larger batch `x` is (offsets are drawn for the whole batch)."""
    n, _, h, w = x.shape
    rows = rows or Rows(0, n, n)
    padded = F.pad(x, (padding,) * 4)
    dy, dx = (to_device(rows.pick(torch.randint(0, 2 * padding + 1, (rows.total,),
                                                generator=generator)), x.device)
              for _ in range(2))
    ys = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    xs = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, ys, xs].squeeze(1).permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator,
           rows: Rows | None = None) -> torch.Tensor:
    """Zero one size x size square per image (DeVries & Taylor, 2017, as DARTS applies it: after
    normalisation, centred anywhere in the image, clipped at the borders).

    Not timm's `RandomErasing`: it draws an area fraction and aspect ratio per image and keeps
    the rectangle inside the image (not DARTS' fixed, clipped square), and it draws positions
    from Python's `random`, outside the loader's checkpointed generator (resume would differ)."""
    n, _, h, w = x.shape
    rows = rows or Rows(0, n, n)
    top, left = (to_device(rows.pick(torch.randint(0, extent, (rows.total, 1, 1, 1),
                                                   generator=generator)), x.device) - size // 2
                 for extent in (h, w))
    ys = torch.arange(h, device=x.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, 1, w)
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return x.masked_fill(inside, 0.0)
