"""Setting up from a config: device, data, loaders, the supernet, a search, and the context in
which compact models are trained and evaluated."""
from __future__ import annotations

import copy

import itertools
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from maskednas import parallel
from maskednas.datasource import DataError, DeviceLoader, ImageData, load_dataset
from maskednas.datasource.sources import seeded_split
from maskednas.latency.cache import obtain_table, save_run_copy
from maskednas.pipeline.config import (ConfigError, FinetuneConfig, RunConfig, from_dict, search_goals,
                                       to_dict, upgrade_moved_keys, uses_latency)
from maskednas.search.loop import Searcher
from maskednas.search.sandwich import SandwichSearcher
from maskednas.search.penalty import resolve_targets
from maskednas.supernet import SPACES
from maskednas.training.autocast import autocast_factory
from maskednas.training.finetune import evaluate, finetune


@dataclass(frozen=True)
class DataMeta:
    """What a model needs to know of its data; saved in checkpoints and exports."""
    name: str
    in_channels: int
    num_classes: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def select_device(name: str, key: str = "device") -> torch.device:
    """The device `name` means here; for the run's `device` under torchrun, this rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if key == "device" and parallel.launched() and name.startswith("cuda:"):
        raise ConfigError(f"device={name!r} under torchrun: each rank takes the GPU of its "
                          f"LOCAL_RANK; use device=cuda or auto (and CUDA_VISIBLE_DEVICES to "
                          f"choose the GPUs)")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name!r} but CUDA is not available here; use {key}=cpu"
                          f"{' or auto' if key == 'device' else ''}")
    device = torch.device(name)
    if key == "device":
        device = parallel.rank_device(device)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{key}={name!r} but this machine has {torch.cuda.device_count()} GPU(s)"
                          + (f" for local rank {parallel.local_rank()}" if parallel.launched()
                             else ""))
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def data_meta(data: ImageData) -> DataMeta:
    mean, std = data.channel_stats()
    return DataMeta(data.name, data.in_channels, data.num_classes, data.image_size, mean, std)


def split_for_search(n: int, regime: str, arch_fraction: float,
                     seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the training split the weights and the architecture step on: disjoint
    (bilevel), or both all of it (single_level)."""
    if regime == "single_level":
        return torch.arange(n), torch.arange(n)
    return seeded_split(n, arch_fraction, seed)


def loader(cfg: RunConfig, x, y, meta: DataMeta, device, train: bool, seed: int) -> DeviceLoader:
    """Batches of `data.batch_size` images (the global batch: this rank's shard of each)."""
    d = cfg.data
    return DeviceLoader(x, y, d.batch_size, meta.mean, meta.std, device, shuffle=train,
                        crop_padding=d.crop_padding, hflip=d.hflip, drop_last=train, seed=seed,
                        channels_last=cfg.channels_last, shard=(parallel.rank(), parallel.size()))


def build_supernet(cfg: RunConfig, meta: DataMeta, device) -> torch.nn.Module:
    net = SPACES.get(cfg.space)(cfg.space_config, meta.in_channels, meta.num_classes,
                                meta.input_size)
    net = net.to(device)
    return net.to(memory_format=torch.channels_last) if cfg.channels_last else net


def apply_threads(cfg: RunConfig) -> None:
    """The config's CPU thread count, and subnormal floats flushed to zero: gates annealed to
    sigmoid(logit / 0.01) put values below 1e-38 into whole activations, and a CPU computes on
    them several times more slowly (the digits search stepped at half its speed in its last
    epochs); they are far below float32's resolution of anything they are added to."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)


def latency_model(cfg: RunConfig, net, run_dir: Path | None = None, report=print,
                  always: bool = False, write_cache: bool = True):
    """The run's `latency.LatencyModel` when it has a latency target (or `always`; else None):
    the table of the run directory, the one `latency.table` names, a cached one or a new
    measurement."""
    if not (always or uses_latency(cfg)):
        return None
    lat = cfg.latency
    cache = Path(lat.cache_dir) if lat.cache_dir else Path(cfg.out_dir) / "latency-tables"
    return obtain_table(net, select_device(lat.device, "latency.device"), lat.runtime, lat.batch,
                        cfg.channels_last, lat.grid_points, lat.repeats, lat.rounds, cache,
                        lat.table, run_dir,
                        report, write_cache,
                        # a user's network: on the widths derivation rounds to (the macro space's
                        # grids are those it was measured on)
                        grid_step=cfg.derive.round_to if cfg.space == "model" else 1)


def load_data(cfg: RunConfig) -> ImageData:
    d = cfg.data
    data = load_dataset(d.name, d.path, d.download, d.image_size, d.num_classes, d.sequence_length)
    data = data.held_out(d.validation_fraction, d.validation_seed)
    return data.resized(d.resize) if d.resize else data


def prepare_search(cfg: RunConfig, run_dir: Path, data: ImageData | None = None,
                   logger_factory=None) -> Searcher:
    """Everything a search needs, built deterministically from the config and seed."""
    seed_everything(cfg.seed)
    apply_threads(cfg)
    device = select_device(cfg.device)
    data = data or load_data(cfg)
    meta = data_meta(data)
    net = build_supernet(cfg, meta, device)
    with parallel.main_first():  # rank 0 measures (or reads) the table and copies it to the run
        latency = latency_model(cfg, net, run_dir)
        if latency is not None and parallel.is_main():
            save_run_copy(latency, run_dir)
    targets = resolve_targets(search_goals(cfg), net, cfg.derive.min_channels, latency,
                              cfg.latency.batch)
    if cfg.sync_bn:  # one process: the same as BatchNorm (its batch is the global one)
        net = parallel.sync_batchnorm(net)
    s = cfg.search
    train_idx, arch_idx = split_for_search(len(data.y_train), s.regime,
                                           0.5 if s.arch_fraction is None else s.arch_fraction, cfg.seed)
    train = loader(cfg, data.x_train[train_idx], data.y_train[train_idx], meta, device, True, cfg.seed)
    arch = loader(cfg, data.x_train[arch_idx], data.y_train[arch_idx], meta, device, True, cfg.seed + 1)
    logger = (logger_factory(run_dir, net, targets)
              if logger_factory and parallel.is_main() else None)
    searcher = SandwichSearcher if s.strategy == "sandwich" else Searcher
    return searcher(cfg, net, train, arch, targets, run_dir, logger, latency=latency,
                    extra_state={"config": to_dict(cfg), "data": asdict(meta),
                                 "data_sha256": data.fingerprint()})


def check_ranks(cfg: RunConfig, device: torch.device) -> None:
    """What the config must meet to run over this torchrun group (nothing for one process)."""
    ranks, batch = parallel.size(), cfg.data.batch_size
    if ranks > 1 and batch % ranks:
        raise ConfigError(f"data.batch_size={batch} is the global batch, split over {ranks} "
                          f"ranks: it must be a multiple of {ranks}, e.g. "
                          f"{max(batch // ranks, 1) * ranks} or {(batch // ranks + 1) * ranks}")
    if parallel.started() and cfg.sync_bn and device.type != "cuda":
        raise ConfigError("sync_bn=true under torchrun needs GPUs: torch's SyncBatchNorm has no "
                          "CPU kernel; on CPUs (gloo) run with sync_bn=false")


def preflight(cfg: RunConfig, data: ImageData, run_dir: Path | None = None) -> None:
    """What can fail in setting up a search, checked before a run writes anything: the supernet
    of this space on this data, and the cost targets against it (the device is `select_device`'s;
    a latency target's table is measured here if no cache has it, into the cache only)."""
    apply_threads(cfg)
    check_data_fits_model(cfg, data)
    meta = data_meta(data)
    net = build_supernet(cfg, meta, torch.device("cpu"))
    resolve_targets(search_goals(cfg), net, cfg.derive.min_channels,
                    latency_model(cfg, net, run_dir, write_cache=False), cfg.latency.batch)


def check_data_fits_model(cfg: RunConfig, data: ImageData) -> None:
    """Text goes with a language model (an hf: source) and images with every other network."""
    from maskednas.datasource import TokenData
    from maskednas.export.hf_models import is_language_model
    source = getattr(cfg.space_config, "source", "")
    language_model = cfg.space == "model" and is_language_model(source)
    if isinstance(data, TokenData) and not language_model:
        raise ConfigError(f"data.name={cfg.data.name} is text (token ids): it trains a language "
                          f"model, space=model with model.source=hf:<model_type>, not "
                          f"{source or f'the {cfg.space} space'}")
    if language_model and not isinstance(data, TokenData):
        raise ConfigError(f"model.source={source} is a language model: it reads text, "
                          f"data.name=pydoc or textfile, not {cfg.data.name}")
    if language_model and uses_latency(cfg):
        raise ConfigError("a latency target on a language model: latency tables and timings of "
                          "this tool read images; use a macs or params target")
    if language_model and cfg.export.quantize:
        raise ConfigError(f"export.quantize={cfg.export.quantize}: the quantized ONNX artefacts are "
                          f"calibrated and scored on images; a language model exports in fp32 "
                          f"(export.quantize=[])")


def check_same_data(state: dict, data: ImageData, cfg: RunConfig, run_dir: Path,
                    contents: bool = True) -> None:
    """Refuse to go on with a search (`state`, its checkpoint) on data of another class count,
    or, with `contents`, on data other than it started on (a checkpoint written before searches
    recorded their data's sha256 has nothing to compare)."""
    searched = state.get("data", {})
    now_shape = {"num_classes": data.num_classes, "in_channels": data.in_channels,
                 "input_size": data.image_size}
    for key, value in now_shape.items():
        if searched.get(key, value) != value:
            raise DataError(f"{run_dir}'s search was made for data with {key} {searched[key]}, "
                            f"the data now has {value} ({cfg.data.path or cfg.data.name}); a "
                            f"search goes on with the classes and image size it started with")
    started = state.get("data_sha256") if contents else None
    now = data.fingerprint() if started is not None else None
    if started is not None and started != now:
        where = cfg.data.path or f"data.name={cfg.data.name}"
        raise DataError(f"the data changed since {run_dir}'s search started: {where} (sha256 of "
                        f"its images and labels {started[:12]}... then, {now[:12]}... "
                        f"now); restore it, or pass --accept-changed-data to continue the search "
                        f"on the new data")


def restore_supernet(state: dict, device) -> tuple[torch.nn.Module, RunConfig, DataMeta]:
    """Rebuild a searched supernet from a search checkpoint (its config and data are inside)."""
    saved = copy.deepcopy(state["config"])
    upgrade_moved_keys(saved)  # a checkpoint written with the earlier target keys
    cfg = from_dict(RunConfig, saved)
    meta = DataMeta(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["data"].items()})
    net = build_supernet(cfg, meta, device)
    net.load_state_dict(state["model"])
    net.set_progress(1.0)  # the searched state: schedules (e.g. DARTS' auxiliary skip) at their end
    return net, cfg, meta


class TrainingContext:
    """Loaders, precision and device of a run, for training and evaluating compact models with
    the run's augmentation and schedule: what the fine-tune stage and every baseline share."""

    def __init__(self, cfg: RunConfig, data: ImageData, device: torch.device) -> None:
        self.cfg, self.data, self.device = cfg, data, device
        self.meta = data_meta(data)
        self.autocast = autocast_factory(device, cfg.amp)
        self.test_loader = loader(cfg, data.x_test, data.y_test, self.meta, device, train=False,
                                  seed=0)
        self.val_loader = None if data.x_val is None else loader(
            cfg, data.x_val, data.y_val, self.meta, device, train=False, seed=0)

    def train_loader(self, seed: int | None = None) -> DeviceLoader:
        seed = self.cfg.seed + 2 if seed is None else seed
        return loader(self.cfg, self.data.x_train, self.data.y_train, self.meta, self.device,
                      train=True, seed=seed)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """On the run's device, in the run's memory format."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.cfg.channels_last else model

    def train(self, model: torch.nn.Module, cfg: FinetuneConfig | None = None, teacher=None,
              logger=None, train_loader: DeviceLoader | None = None) -> torch.nn.Module:
        """Fine-tune (or train from scratch, per `cfg`) on the whole training set."""
        cfg = cfg or self.cfg.finetune
        train_loader = train_loader or self.train_loader()
        train_loader.cutout = cfg.cutout  # training batches only
        model = self.prepare(model)
        if self.cfg.sync_bn:  # BatchNorm over the global batch while training, plain for export
            model = parallel.sync_batchnorm(model)
        trained = finetune(model, cfg, train_loader, teacher=teacher, autocast=self.autocast,
                           logger=logger)
        return parallel.plain_batchnorm(trained) if self.cfg.sync_bn else trained

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Loss and accuracy on the test split."""
        return evaluate(model, self.test_loader, self.autocast)

    def validate(self, model: torch.nn.Module) -> dict[str, float | None]:
        """Loss and accuracy on the validation split (None without one): what choices are made on."""
        if self.val_loader is None:
            return {"acc": None, "loss": None}
        return evaluate(model, self.val_loader, self.autocast)

    def arrays(self, split: str, batches: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Batches of a split as normalised float32 NCHW numpy arrays and labels, preprocessed as
        for evaluation (no augmentation): what ONNX artefacts are calibrated and scored on."""
        x, y = (self.data.x_train, self.data.y_train) if split == "train" else (
            self.data.x_test, self.data.y_test)
        plain = DeviceLoader(x, y, self.cfg.data.batch_size, self.meta.mean, self.meta.std,
                             shuffle=False, drop_last=False)
        return [(bx.numpy(), by.numpy()) for bx, by in itertools.islice(plain, batches)]


__all__ = ["DataMeta", "latency_model", "apply_threads", "TrainingContext",
           "prepare_search", "preflight", "check_ranks", "restore_supernet", "select_device",
           "seed_everything", "split_for_search", "loader", "load_data", "data_meta",
           "build_supernet"]
