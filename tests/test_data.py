"""Data sources and the on-device loader."""
import numpy as np
import pytest
import torch

from maskednas.datasource import DeviceLoader, load_dataset, random_crop


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (20, 5, 5, 3), dtype=np.uint8),
              "y_train": rng.integers(0, 4, 20), "x_test": rng.integers(0, 256, (6, 5, 5, 3), dtype=np.uint8),
              "y_test": rng.integers(0, 4, 6)}
    np.savez(tmp_path / "d.npz", **arrays)
    data = load_dataset("npz", str(tmp_path / "d.npz"))
    assert data.x_train.shape == (20, 3, 5, 5) and data.x_train.dtype == torch.uint8
    assert torch.equal(data.x_train.permute(0, 2, 3, 1), torch.from_numpy(arrays["x_train"]))
    assert data.num_classes == int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1


def test_npz_with_missing_arrays_names_them(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.zeros((2, 4, 4, 3), np.uint8), y_train=np.zeros(2))
    with pytest.raises(ValueError, match=r"missing arrays \['x_test', 'y_test'\]"):
        load_dataset("npz", str(tmp_path / "d.npz"))


def test_image_folder(tmp_path):
    from PIL import Image
    for split in ("train", "val"):
        for label, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (20, 12), colour).save(tmp_path / split / label / f"{i}.png")
    data = load_dataset("imagefolder", str(tmp_path), image_size=8)
    assert data.x_train.shape == (4, 3, 8, 8) and data.num_classes == 2
    assert data.y_train.tolist() == [0, 0, 1, 1]
    assert data.x_train[0, 0].unique().tolist() == [255] and data.x_train[2, 2].unique().tolist() == [255]


def test_digits_split_is_fixed_and_stratified():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert torch.equal(a.y_test, b.y_test) and len(a.y_test) == 360 and len(a.y_train) == 1437
    assert a.y_test.bincount().min() >= 35  # every class in the test set
    assert a.x_train.max() == 255 and a.in_channels == 1 and a.image_size == 8


def test_random_crop_shifts_each_image_within_its_padding():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float).view(2, 1, 4, 4) + 1
    out = random_crop(x, 1, torch.Generator().manual_seed(3))
    assert out.shape == x.shape
    for img, src in zip(out, x):
        padded = torch.nn.functional.pad(src, (1, 1, 1, 1))
        windows = [padded[:, i:i + 4, j:j + 4] for i in range(3) for j in range(3)]
        assert any(torch.equal(img, w) for w in windows)


def test_loader_normalises_and_is_reproducible():
    x = torch.randint(0, 256, (50, 1, 6, 6), dtype=torch.uint8)
    y = torch.arange(50)
    make = lambda: DeviceLoader(x, y, 16, mean=(0.5,), std=(0.25,), crop_padding=1, seed=7)
    first, second = list(make()), list(make())
    assert len(first) == 3  # drop_last for training
    for (xa, ya), (xb, yb) in zip(first, second):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    evaluation = DeviceLoader(x, y, 16, mean=(0.5,), std=(0.25,), shuffle=False, drop_last=False)
    xs, ys = zip(*evaluation)
    assert torch.equal(torch.cat(ys), y)  # every image once, in order, no augmentation
    assert torch.allclose(torch.cat(xs), (x.float() / 255 - 0.5) / 0.25)


def test_resize_downsamples_every_split_with_antialiasing():
    from maskednas.pipeline import load_config
    from maskednas.pipeline.setup import load_data

    data = load_data(load_config(None, ["data.resize=4", "data.validation_fraction=0"]))  # 8x8 -> 4x4
    full = load_dataset("digits")
    assert data.x_train.shape == (len(full.y_train), 1, 4, 4) and data.x_test.shape[-1] == 4
    assert torch.equal(data.y_train, full.y_train) and data.x_train.dtype == torch.uint8
    held = load_data(load_config(None, ["data.resize=4"]))
    assert held.x_val.shape[-1] == 4 and len(held.y_val) + len(held.y_train) == len(full.y_train)
    checker = torch.tensor([[0, 255] * 4, [255, 0] * 4] * 4, dtype=torch.uint8).view(1, 1, 8, 8)
    from maskednas.datasource import ImageData
    small = ImageData("c", checker, torch.zeros(1, dtype=torch.long), checker,
                      torch.zeros(1, dtype=torch.long), 1).resized(4)
    assert (small.x_train.float() - 127.5).abs().max() <= 3  # averaged, not subsampled (0 or 255)


def test_classes_only_one_split_has_are_named_with_their_counts(tmp_path):
    from maskednas.datasource.checks import DataWarning
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8),
             y_train=np.arange(40) % 4, x_test=rng.integers(0, 256, (9, 8, 8, 3), dtype=np.uint8),
             y_test=np.arange(9) % 3)
    with pytest.warns(DataWarning, match=r"class 3: 10 train / 0 test images: the test split has none"):
        data = load_dataset("npz", str(tmp_path / "d.npz"))
    assert data.num_classes == 4
    assert load_dataset("npz", str(tmp_path / "d.npz"), num_classes=4).num_classes == 4


def test_the_fingerprint_changes_with_any_label_or_pixel(tmp_path):
    data = load_dataset("digits")
    before = data.fingerprint()
    data.y_train[7] = (data.y_train[7] + 1) % 10
    assert data.fingerprint() != before
    data.y_train[7] = (data.y_train[7] - 1) % 10
    assert data.fingerprint() == before
    data.x_test[0, 0, 0, 0] ^= 1
    assert data.fingerprint() != before


def images_of(x: torch.Tensor) -> set[bytes]:
    return {img.numpy().tobytes() for img in x}


def test_the_validation_split_is_held_out_of_every_training_loader(tmp_path):
    """10% of the training images, the same draw for every run seed, in no loader the search or
    the fine-tune trains on; bilevel keeps the architecture's images from the weights'."""
    from maskednas.datasource import ImageData
    from maskednas.pipeline import load_config
    from maskednas.pipeline.setup import TrainingContext, load_data, prepare_search

    full = load_dataset("digits")
    runs = {seed: load_data(load_config(None, [f"seed={seed}"])) for seed in (0, 5)}
    assert torch.equal(runs[0].y_val, runs[5].y_val) and torch.equal(runs[0].x_val, runs[5].x_val)
    assert len(runs[0].y_val) == round(0.1 * len(full.y_train))
    assert len(runs[0].y_val) + len(runs[0].y_train) == len(full.y_train)
    # images that tell themselves apart: pixel (0, 0) and (0, 1) hold the image's index
    n = 300
    x = torch.randint(0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = torch.arange(n) % 256, torch.arange(n) // 256
    y = torch.arange(n) % 10
    data = ImageData("unique", x, y, x[:50].clone(), y[:50].clone(), 10).held_out(0.1, 0)
    assert images_of(data.x_val) | images_of(data.x_train) == images_of(x)
    assert not images_of(data.x_val) & images_of(data.x_train) and len(data.y_val) == 30
    for regime in ("single_level", "bilevel"):
        cfg = load_config(None, ["data.batch_size=64", f"search.regime={regime}", f"out_dir={tmp_path}"])
        searcher = prepare_search(cfg, tmp_path / regime, data)
        weights, arch = images_of(searcher.train_loader.x), images_of(searcher.arch_loader.x)
        assert not images_of(data.x_val) & (weights | arch)
        assert (weights == arch == images_of(data.x_train)) if regime == "single_level" else (
            not weights & arch and weights | arch == images_of(data.x_train))
    ctx = TrainingContext(load_config(None), data, torch.device("cpu"))
    assert images_of(ctx.train_loader().x) == images_of(data.x_train)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        logits = model((data.x_val.float() / 255 - ctx.meta.mean[0]) / ctx.meta.std[0])
    assert ctx.validate(model)["acc"] == pytest.approx(float((logits.argmax(1) == data.y_val).float().mean()))
