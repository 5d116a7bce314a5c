"""Every data split is checked when it is loaded, before anything trains: array layout, sizes,
lengths and labels. Each error names the array at fault and what is allowed."""
from __future__ import annotations

import warnings

import numpy as np
import torch


class DataError(ValueError):
    pass


def nhwc_images(name: str, array_name: str, x) -> torch.Tensor:
    """A uint8 NHWC array of square images as a (N, C, H, W) tensor."""
    x = np.asarray(x)
    if x.ndim != 4 or x.dtype != np.uint8:
        raise DataError(f"{name}: {array_name} must be a uint8 array of shape (N, H, W, C), got "
                        f"{x.dtype} with shape {x.shape}")
    n, h, w, c = x.shape
    if h != w:
        hint = ("; it looks like (N, C, H, W): pass x.transpose(0, 2, 3, 1)" if w == c else "")
        raise DataError(f"{name}: {array_name} has shape {x.shape}; images must be (N, H, W, C) "
                        f"with square H == W{hint}")
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()


def labels(name: str, array_name: str, y) -> torch.Tensor:
    y = np.asarray(y)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or
                           (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0))):
        raise DataError(f"{name}: {array_name} must be a 1-D array of integer class labels, got "
                        f"{y.dtype} with shape {y.shape}")
    return torch.as_tensor(y.astype(np.int64))


def check_splits(name: str, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                 y_test: torch.Tensor, num_classes: int | None) -> int:
    """Checks both splits together; returns the number of classes (inferred from y_train,
    whose labels must then be exactly 0..K-1, when `num_classes` is None)."""
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if len(x) == 0:
            raise DataError(f"{name}: the {split} split is empty")
        if len(x) != len(y):
            raise DataError(f"{name}: x_{split} has {len(x)} images but y_{split} has {len(y)} "
                            f"labels; they must have the same length")
    if x_test.shape[1:] != x_train.shape[1:]:
        c, h, w = x_train.shape[1:]
        ct, ht, wt = x_test.shape[1:]
        raise DataError(f"{name}: x_test images are {ht}x{wt} with {ct} channel(s), x_train's "
                        f"{h}x{w} with {c}; both splits must have the same size and channels")
    if int(y_train.min()) < 0 or int(y_test.min()) < 0:
        split = "y_train" if int(y_train.min()) < 0 else "y_test"
        raise DataError(f"{name}: {split} has negative labels; labels must be 0..K-1")
    if num_classes is None:
        num_classes = int(y_train.max()) + 1
        missing = sorted(set(range(num_classes)) - set(y_train.unique().tolist()))
        if missing:
            raise DataError(f"{name}: y_train has labels up to {num_classes - 1} but none of "
                            f"{missing[:10]}; labels must be 0..K-1 with every class in y_train")
    for split, y in (("y_train", y_train), ("y_test", y_test)):
        if int(y.max()) >= num_classes:
            bad = sorted({int(v) for v in y[y >= num_classes].unique()})
            raise DataError(f"{name}: {split} has labels {bad[:10]} outside 0..{num_classes - 1} "
                            f"(the classes of the training split)")
    return num_classes


# a class with fewer training images than this fraction of the median class, or with a single
# one where the median class has at least SINGLE_IMAGE_MEDIAN, is taken for a stray label (the
# digits have ~180 a class; a mislabelled image makes a class of one; a one-shot set, median 1,
# is not refused)
RARE_CLASS_FRACTION = 0.05
SINGLE_IMAGE_MEDIAN = 10


def check_classes(data, declared: int | None) -> int:
    """The number of classes: `declared` (`data.num_classes`), whose every class must have
    training images and outside which no label may lie; or, undeclared, the training split's,
    refusing a class far rarer than the others (a stray label would become a class of its own)
    and warning of a class that only one split has."""
    name, y_train, y_test = data.name, data.y_train, data.y_test
    train = torch.bincount(y_train, minlength=data.num_classes)
    test = torch.bincount(y_test, minlength=data.num_classes)
    if declared is not None:
        for split, y in (("y_train", y_train), ("y_test", y_test)):
            bad = sorted({int(v) for v in y[y >= declared].unique()})
            if bad:
                counts = ", ".join(f"{c}: {int(train[c])} train / {int(test[c])} test" for c in bad[:5])
                raise DataError(f"{name}: {split} has labels {bad[:10]} outside 0..{declared - 1} "
                                f"(data.num_classes={declared}; images per class {counts}); fix "
                                f"those labels or declare the count that includes them")
        empty = [c for c in range(declared) if c >= len(train) or train[c] == 0]
        if empty:
            raise DataError(f"{name}: data.num_classes={declared} but classes {empty[:10]} have no "
                            f"training images; labels must cover 0..{declared - 1}")
        return declared
    median = float(train.float().median())
    rare = [c for c in range(len(train)) if train[c] < RARE_CLASS_FRACTION * median
            or (train[c] <= 1 and median >= SINGLE_IMAGE_MEDIAN)]
    if rare:
        counts = ", ".join(f"class {c}: {int(train[c])} train / {int(test[c])} test" for c in rare[:5])
        raise DataError(f"{name}: {counts} images, against a median of {median:.0f} training "
                        f"images per class: a stray label? Fix the labels, or declare the "
                        f"intended count with data.num_classes=N (labels outside 0..N-1 are then "
                        f"refused; a count that includes the class keeps it)")
    only_train = [c for c in range(len(train)) if test[c] == 0]
    if only_train:
        counts = ", ".join(f"class {c}: {int(train[c])} train / 0 test" for c in only_train[:10])
        warnings.warn(f"{name}: {counts} images: the test split has none of these classes, so "
                      f"their accuracy is not measured", DataWarning, stacklevel=2)
    return data.num_classes


class DataWarning(UserWarning):
    """Data that trains but deserves a look (a class only one split has)."""
