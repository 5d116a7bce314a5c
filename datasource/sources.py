"""Data sets as in-memory uint8 tensors (N, C, H, W), registered by name.

Every source returns the same `ImageData`, so the rest of the code never branches on the data set.
Nothing downloads unless the user asks (`data.download=true` for the torchvision data sets).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
import zipfile
from pathlib import Path

import numpy as np
import torch

from maskednas.datasource.checks import DataError, check_classes, check_splits, labels, nhwc_images
from maskednas.common import Registry

DATASETS = Registry("dataset")


@dataclass
class ImageData:
    name: str
    x_train: torch.Tensor  # uint8 (N, C, H, W)
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    # the validation split, carved from the training set (`held_out`): every choice is made on
    # it, the test set is read once per final model
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def image_size(self) -> int:
        return self.x_train.shape[-1]

    def resized(self, size: int) -> "ImageData":
        """Both splits downsampled to size x size with antialiasing (as NAS-Bench-201's ImageNet16
        is made from ImageNet): a cheaper task of real images for CPU-sized experiments."""
        from torchvision.transforms.v2.functional import resize

        def shrink(x: torch.Tensor) -> torch.Tensor:
            return resize(x, [size, size], antialias=True)

        return replace(self, x_train=shrink(self.x_train), x_test=shrink(self.x_test),
                       x_val=None if self.x_val is None else shrink(self.x_val))

    def held_out(self, fraction: float, seed: int = 0) -> "ImageData":
        """`fraction` of the training images (a fixed draw by `seed`, the same for every run)
        moved into the validation split; the training split keeps the rest."""
        if not fraction:
            return self
        train, val = (i.sort().values for i in seeded_split(len(self.y_train), fraction, seed))
        return replace(self, x_train=self.x_train[train], y_train=self.y_train[train],
                       x_val=self.x_train[val], y_val=self.y_train[val])

    def fingerprint(self) -> str:
        """sha256 of both splits' images and labels (shapes included): a resumed search checks
        that it continues on the data it started on."""
        h = hashlib.sha256()
        for t in (self.x_train, self.y_train, self.x_test, self.y_test, self.x_val, self.y_val):
            if t is None:
                continue
            t = t.contiguous().cpu()
            h.update(repr((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training images on the [0, 1] scale."""
        x = self.x_train.float().div_(255)
        return tuple(x.mean((0, 2, 3)).tolist()), tuple(x.std((0, 2, 3)).clamp_min(1e-3).tolist())


def seeded_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices 0..n-1 in a random order fixed by `seed`, cut into the rest and a part of about
    `fraction` of them (at least one in each)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_part = max(1, min(n - 1, round(n * fraction)))
    return order[n_part:], order[:n_part]


def _from_nhwc(name, x_train, y_train, x_test, y_test, num_classes=None) -> ImageData:
    """NHWC uint8 arrays and integer labels, checked (see datasource/checks.py)."""
    arrays = (nhwc_images(name, "x_train", x_train), labels(name, "y_train", y_train),
              nhwc_images(name, "x_test", x_test), labels(name, "y_test", y_test))
    return ImageData(name, *arrays, check_splits(name, *arrays, num_classes))


@DATASETS.register()
def digits(path: str | None = None, **_) -> ImageData:
    """scikit-learn's 8x8 handwritten digits (1797 images, shipped with the package).
    A fixed stratified 80/20 split, independent of the run's seed, so results compare."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = np.round(bunch.images * (255 / 16)).astype(np.uint8)[..., None]  # 17 grey levels -> uint8
    x_tr, x_te, y_tr, y_te = train_test_split(x, bunch.target, test_size=0.2, random_state=0,
                                              stratify=bunch.target)
    return _from_nhwc("digits", x_tr, y_tr, x_te, y_te, 10)


@DATASETS.register()
def npz(path: str | None = None, **_) -> ImageData:
    """Arrays `x_train, y_train, x_test, y_test` (NHWC uint8), e.g. cifar10_subset.npz."""
    if not path:
        raise ValueError("data.name=npz needs data.path=<file.npz>")
    if not Path(path).is_file():
        raise FileNotFoundError(f"npz data file {path!r} does not exist")
    try:
        with np.load(path) as f:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
            if missing:
                raise DataError(f"{path}: missing arrays {sorted(missing)}; it has {sorted(f.files)}")
            arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path} is not a readable .npz file of plain arrays: {e}") from e
    return _from_nhwc(Path(path).stem, **arrays)


def _torchvision(cls_name: str, path: str | None, download: bool) -> ImageData:
    import torchvision

    if not path:
        raise ValueError(f"data.name={cls_name.lower()} needs data.path=<root folder>")
    cls = getattr(torchvision.datasets, cls_name)
    try:
        train, test = (cls(path, train=t, download=download) for t in (True, False))
    except RuntimeError as e:
        raise FileNotFoundError(
            f"{cls_name} files not found under {path!r} ({e}). Put the extracted python version "
            f"there, or pass data.download=true to fetch it") from e
    return _from_nhwc(cls_name.lower(), train.data, train.targets, test.data, test.targets,
                      len(train.classes))


@DATASETS.register()
def cifar10(path: str | None = None, download: bool = False, **_) -> ImageData:
    return _torchvision("CIFAR10", path, download)


@DATASETS.register()
def cifar100(path: str | None = None, download: bool = False, **_) -> ImageData:
    return _torchvision("CIFAR100", path, download)


@DATASETS.register()
def imagefolder(path: str | None = None, image_size: int = 32, **_) -> ImageData:
    """`path/train/<class>/*.jpg` and `path/val/<class>/*` (or `test/`), resized to
    `image_size` and held in memory: meant for folders of up to a few hundred thousand images."""
    from torchvision import datasets, transforms

    if not path or not (Path(path) / "train").is_dir():
        raise FileNotFoundError(f"image folder {path!r} must contain train/ and val/ (or test/)")
    eval_dir = next((Path(path) / d for d in ("val", "test") if (Path(path) / d).is_dir()), None)
    if eval_dir is None:
        raise FileNotFoundError(f"image folder {path!r} has train/ but neither val/ nor test/")
    tf = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size),
                             transforms.PILToTensor()])

    def load(folder):
        try:
            ds = datasets.ImageFolder(str(folder), transform=tf)
            xs, ys = zip(*ds)
        except (FileNotFoundError, OSError, ValueError) as e:  # no class folders, no images, bad files
            raise DataError(f"image folder {folder}: {e}") from e
        return torch.stack(xs), torch.tensor(ys), ds.classes

    x_tr, y_tr, classes = load(Path(path) / "train")
    x_te, y_te, test_classes = load(eval_dir)
    if test_classes != classes:
        raise ValueError(f"{eval_dir} has classes {test_classes}, train/ has {classes}")
    name = Path(path).name
    return ImageData(name, x_tr, y_tr, x_te, y_te,
                     check_splits(name, x_tr, y_tr, x_te, y_te, len(classes)))


def load_dataset(name: str, path: str | None = None, download: bool = False,
                 image_size: int = 32, num_classes: int | None = None,
                 sequence_length: int = 64) -> ImageData:
    """The data set `name`, its classes checked (`checks.check_classes`; `num_classes`: the
    count the user declares). Text data sets (datasource/text.py) have the tokenizer's
    vocabulary as their classes."""
    data = DATASETS.get(name)(path=path, download=download, image_size=image_size,
                              sequence_length=sequence_length)
    if data.x_train.dim() == 2:  # token windows: every id of the vocabulary is a class
        if num_classes not in (None, data.num_classes):
            raise DataError(f"data.num_classes={num_classes}, but {name} is text whose classes are "
                            f"its {data.num_classes} byte-level tokens: leave data.num_classes unset")
        return data
    if name == "imagefolder" and num_classes is None:  # its folders declare the classes
        num_classes = data.num_classes
    return replace(data, num_classes=check_classes(data, num_classes))
