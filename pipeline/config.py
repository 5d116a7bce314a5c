"""Run configuration: dataclasses, YAML files and `key=value` overrides.

Unknown keys and ill-typed values fail with the dotted key and the list of valid keys, before
anything runs. The resolved config is written into the run directory and into every checkpoint.
The search space's section is found through the space registry: `space: NAME` selects a
registered space, and the top-level section `NAME:` holds the fields of its config dataclass.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from supernet import ESTIMATORS, SPACES


class ConfigError(ValueError):
    pass


@dataclass
class DataConfig:
    name: str = "digits"  # digits | npz | cifar10 | cifar100 | imagefolder
    path: str | None = None  # npz file or data set root folder
    download: bool = False  # torchvision data sets only, never implicit
    image_size: int = 32  # imagefolder only
    batch_size: int = 64
    val_fraction: float = 0.5  # of the training set, held out for the architecture step
    crop_padding: int = 1
    hflip: bool = False


@dataclass
class TargetConfig:
    """Cost target of the search. Absolute values win over fractions of the dense network."""
    macs: float | None = None
    macs_fraction: float | None = 0.5
    params: float | None = None
    params_fraction: float | None = None
    weight: float = 2.0  # penalty = weight * sum of log(cost / target)^2
    # discrete: cost of the currently derived network, straight-through gradients (default);
    # expected: the soft expectation over op weights and gates (plain DARTS-style relaxation)
    estimator: str = "discrete"


@dataclass
class SearchConfig:
    epochs: int = 30
    warmup_epochs: int = 5  # weights only: the architecture is frozen (also against DARTS' skip collapse)
    order: int = 1  # 1: first-order DARTS; 2: unrolled step with finite-difference Hessian
    hessian_eps: float = 0.01  # second order: finite-difference step / |dL_val/dw'| (DARTS)
    w_lr: float = 0.05
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 0.1  # short searches: measured on digits, 0.03 left alpha near uniform
    arch_weight_decay: float = 0.0  # on alpha only
    mask_weight_decay: float = 0.0  # on mask logits: decay pulls them toward the keep threshold
    temperature_start: float = 1.0
    temperature_end: float = 0.01  # cold enough that the last epochs train a discrete network
    target: TargetConfig = field(default_factory=TargetConfig)


@dataclass
class DeriveConfig:
    macs: float | None = None  # default: the search target
    tolerance: float = 0.03
    round_to: int = 1
    min_channels: int = 1
    # when the searched ops are too cheap for the target at full width, move the least
    # confident choices to costlier ops (false: keep the ops, derive the closest network)
    promote_ops: bool = True
    # DARTS space: train the searched cells in a larger evaluation network from scratch (the
    # DARTS protocol uses 20 cells of 36 channels) instead of fine-tuning the slimmed search net
    eval_cells: int | None = None
    eval_channels: int = 36


@dataclass
class FinetuneConfig:
    epochs: int = 30
    lr: float = 0.05
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 0
    from_scratch: bool = False  # re-initialise instead of starting from the slimmed weights
    kd_weight: float = 0.0  # knowledge distillation from the supernet
    kd_temperature: float = 4.0
    ema_decay: float | None = None  # e.g. 0.999 for a timm ModelEmaV3 copy
    # DARTS' evaluation protocol (0.2, 0.4, 16 there): drop-path probability reached in the last
    # epoch (cell edges, residual branches), auxiliary head loss weight (cell networks), cutout size
    drop_path: float = 0.0
    aux_weight: float = 0.0
    cutout: int = 0


@dataclass
class RunConfig:
    name: str | None = None  # run directory name under out_dir; default: <config>-<time>
    out_dir: str = "runs"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # bf16 autocast
    channels_last: bool = False
    log_every: int = 10  # steps between progress updates (each costs one host sync)
    threads: int | None = None  # torch CPU threads
    space: str = "macro"  # a registered search space; the section of that name configures it
    space_config: Any = None  # that section, as the space's config dataclass (see `from_dict`)
    data: DataConfig = field(default_factory=DataConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    derive: DeriveConfig = field(default_factory=DeriveConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        if self.space_config is None and self.space in SPACES.names():
            self.space_config = SPACES.get(self.space).config_class()


def _convert(value: Any, hint: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return from_dict(hint, value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 3e5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise ConfigError(f"{key} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    if cls is RunConfig:
        return _run_config(data)
    return _build(cls, data, prefix)


def _build(cls: type, data: dict, prefix: str = "", exclude: tuple[str, ...] = (),
           also_valid: tuple[str, ...] = ()) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in exclude]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f"in '{prefix}'" if prefix else "at the top level"
        raise ConfigError(f"unknown config key '{_join(prefix, unknown[0])}'; valid keys {where}: "
                          f"{', '.join([*names, *also_valid])}")
    return cls(**{k: _convert(v, hints[k], _join(prefix, k)) for k, v in data.items()})


def _run_config(data: dict) -> RunConfig:
    """The top level: the chosen space's section is parsed with that space's config class."""
    data = dict(data)
    space = data.get("space", RunConfig.space)
    if not isinstance(space, str) or space not in SPACES.names():
        raise ConfigError(f"unknown space {space!r}; spaces are {', '.join(SPACES.names())}")
    if "space_config" in data:
        raise ConfigError(f"'space_config' is not a config key: configure the space in the "
                          f"section named after it ('{space}:')")
    other = [k for k in data if k in SPACES.names() and k != space]
    if other:
        raise ConfigError(f"section '{other[0]}' configures the {other[0]} space, but space is "
                          f"{space!r}; set space={other[0]} or remove the section")
    section = data.pop(space, None) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{space} must be a mapping, got {section!r}")
    cfg = _build(RunConfig, data, exclude=("space_config",), also_valid=(space,))
    cfg.space_config = from_dict(SPACES.get(space).config_class, section, space)
    return cfg


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def to_dict(cfg: Any) -> dict:
    """Plain data; for a RunConfig, the space's section under its name (as in YAML)."""
    if not isinstance(cfg, RunConfig):
        return dataclasses.asdict(cfg)
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "space_config":
            continue
        out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        if f.name == "space":
            out[value] = dataclasses.asdict(cfg.space_config)
    return out


def apply_override(data: dict, assignment: str) -> None:
    """Apply `a.b.c=value` (value parsed as YAML) to a nested dict."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key=value, e.g. search.epochs=10")
    key, raw = assignment.split("=", 1)
    *parents, leaf = key.strip().split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {key}: '{p}' is not a section")
    node[leaf] = yaml.safe_load(raw)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    data: dict = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of sections")
    for assignment in overrides:
        apply_override(data, assignment)
    cfg = from_dict(RunConfig, data)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    s, f = cfg.search, cfg.finetune
    cell_based = SPACES.get(cfg.space).cell_based
    checks = [
        (s.epochs >= 1, f"search.epochs must be >= 1, got {s.epochs}"),
        (0 <= s.warmup_epochs <= s.epochs,
         f"search.warmup_epochs must be in [0, search.epochs={s.epochs}], got {s.warmup_epochs}"),
        (s.arch_weight_decay >= 0 and s.mask_weight_decay >= 0,
         "search.arch_weight_decay and search.mask_weight_decay must be >= 0"),
        (s.order in (1, 2), f"search.order must be 1 (first order) or 2 (second order), got {s.order}"),
        (s.temperature_end > 0 and s.temperature_start > 0, "search temperatures must be > 0"),
        (0 < cfg.data.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {cfg.data.val_fraction}"),
        (cfg.data.batch_size >= 1, f"data.batch_size must be >= 1, got {cfg.data.batch_size}"),
        (cfg.finetune.epochs >= 0, f"finetune.epochs must be >= 0, got {cfg.finetune.epochs}"),
        (s.target.estimator in ESTIMATORS.names(),
         f"search.target.estimator must be one of {', '.join(ESTIMATORS.names())}, "
         f"got {s.target.estimator!r}"),
        (cfg.derive.round_to >= 1, f"derive.round_to must be >= 1, got {cfg.derive.round_to}"),
        (cfg.derive.eval_cells is None or cell_based,
         f"derive.eval_cells builds a DARTS evaluation network of cells; the {cfg.space!r} space "
         f"has no cells"),
        (0 <= f.drop_path < 1, f"finetune.drop_path must be in [0, 1), got {f.drop_path}"),
        (f.aux_weight >= 0, f"finetune.aux_weight must be >= 0, got {f.aux_weight}"),
        (f.aux_weight == 0 or cell_based,
         f"finetune.aux_weight adds DARTS' auxiliary head to a cell network; the {cfg.space!r} "
         f"space has no cells"),
        (f.cutout >= 0, f"finetune.cutout must be >= 0 pixels, got {f.cutout}"),
    ]
    for frac_key in ("macs_fraction", "params_fraction"):
        frac = getattr(s.target, frac_key)
        checks.append((frac is None or 0 < frac <= 1,
                       f"search.target.{frac_key} must be in (0, 1], got {frac}"))
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    cfg.space_config.validate()
