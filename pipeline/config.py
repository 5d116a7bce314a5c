"""Run configuration: dataclasses, YAML files and `key=value` overrides.

Unknown keys and ill-typed values fail with the dotted key and the list of valid keys, before
anything runs. The resolved config is written into the run directory and into every checkpoint.
The search space's section is found through the space registry: `space: NAME` selects a
registered space, and the top-level section `NAME:` holds the fields of its config dataclass.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from maskednas.export.onnx_runtime import PRECISIONS
from maskednas.export.quantize import CALIBRATIONS
from maskednas.latency.measure import ROUND_TO, RUNTIMES
from maskednas.supernet import ESTIMATORS, SPACES
from maskednas.supernet.targets import COST_TARGETS
from maskednas.training.optimizers import OPTIMIZERS


class ConfigError(ValueError):
    pass


@dataclass
class DataConfig:
    name: str = "digits"  # digits | npz | cifar10 | cifar100 | imagefolder | pydoc | textfile
    path: str | None = None  # npz file or data set root folder
    download: bool = False  # torchvision data sets only, never implicit
    image_size: int = 32  # imagefolder only
    num_classes: int | None = None  # the intended class count: labels outside 0..N-1 are refused
    resize: int | None = None  # downsample every split to resize x resize (antialiased)
    batch_size: int = 64  # the global batch: under torchrun each of N ranks takes 1/N of it
    # of the training set, held out as the validation split (the same images for every seed):
    # no run trains on it; the summary reports accuracy on it beside the test set's. 0: none
    validation_fraction: float = 0.1
    validation_seed: int = 0
    crop_padding: int = 1
    hflip: bool = False
    sequence_length: int = 64  # text data sets (pydoc, textfile): tokens per window


@dataclass
class TargetGoal:
    """One cost target's value: absolute, in the target's unit, or a fraction of the dense
    network's figure (exactly one of the two)."""
    value: float | None = None
    fraction: float | None = None


def default_targets() -> dict:
    return {"macs": TargetGoal(fraction=0.5)}


@dataclass
class TargetConfig:
    """How the search's cost penalty pulls toward its targets (`search.targets`)."""
    weight: float = 2.0  # penalty = weight * sum of log(cost / target)^2
    # discrete: cost of the currently derived network, straight-through gradients (default);
    # expected: the soft expectation over op weights and gates (plain DARTS-style relaxation)
    estimator: str = "discrete"
    # the penalty's gradients are those of the relaxation at this temperature (its value is
    # unchanged); null: at the search's own, whose gradients vanish as it cools (the search then
    # freezes off its target: measured by benchmarks/search_ablation.py)
    surrogate_temperature: float | None = 1.0


@dataclass
class SandwichConfig:
    """Training the supernet for all of its subnets (`search.strategy=sandwich`, search/sandwich.py)."""
    random_subnets: int = 2  # per step, beside the largest and the smallest
    # the widths a channel group may take, as fractions of its size (rounded as derivation
    # rounds): the subnets trained, and those the front searches
    width_fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    inplace_distillation: bool = True  # subnets learn the largest's outputs (else the labels)


@dataclass
class SearchConfig:
    epochs: int = 30
    warmup_epochs: int = 5  # weights only: the architecture is frozen (also against DARTS' skip collapse)
    order: int = 1  # 1: first-order DARTS; 2: unrolled step with finite-difference Hessian
    # the data the architecture steps on. bilevel (DARTS): `arch_fraction` of the training split,
    # which the weights never see (they step on the rest); single_level: the same training
    # images the weights step on (reshuffled). The validation split is in neither.
    regime: str = "single_level"
    arch_fraction: float | None = None  # bilevel only (default 0.5)
    # the loss's share of the architecture gradient (the penalty's is 1): 0 is the "penalty only"
    # ablation, in which the cost alone decides what is pruned
    arch_loss_weight: float = 1.0
    # distil from the network as it was before pruning in both steps of the search (the `model`
    # space with trained weights): loss = (1 - kd) * CE + kd * KL at finetune.kd_temperature
    kd_weight: float = 0.0
    hessian_eps: float = 0.01  # second order: finite-difference step / |dL_arch/dw'| (DARTS)
    # the registered cost targets (supernet/targets: macs, params, latency_ms, peak_memory_kib)
    # the search penalises, e.g. {macs: {fraction: 0.4}, latency_ms: {value: 0.5}}; derivation
    # meets the one of the highest priority (latency, peak memory, MACs, params); null drops one
    targets: dict[str, TargetGoal | None] = field(default_factory=default_targets)
    w_optimizer: str = "sgd"  # the weights' optimizer: sgd | adamw (w_momentum is its beta1)
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
    # once the derived network has reached the MACs target, each epoch ends on it (within
    # derive.tolerance): all mask logits shift by one offset when it drifted further off
    hold_target: bool = True
    target: TargetConfig = field(default_factory=TargetConfig)
    # differentiable: op and mask logits learned toward the cost targets (one network);
    # sandwich: every subnet trained alike, for a front of budgets (`maskednas front`)
    strategy: str = "differentiable"
    sandwich: SandwichConfig = field(default_factory=SandwichConfig)


@dataclass
class FrontConfig:
    """The Pareto front over a trained supernet (`maskednas front`, search/front.py): validation
    accuracy against each cost in `objectives`, searched by Optuna, and an export per budget."""
    name: str = "front"  # <name>.md/.json/.png and the exports <name>-<objective>-<fraction>
    strategy: str = "evolution"  # evolution (NSGA-II) | bayesian (TPE) | random
    trials: int = 100  # subnets evaluated (the largest and the smallest first)
    timeout_s: float | None = None  # stop sampling after this many seconds
    population: int = 20  # evolution: NSGA-II's population per generation
    objectives: list[str] = field(default_factory=lambda: ["macs"])  # registered cost targets
    # what every subnet must meet, as search.targets (e.g. {params: {fraction: 0.5}})
    constraints: dict[str, TargetGoal] = field(default_factory=dict)
    # a subnet exported per budget: fractions of the dense network's figure of the first objective
    budgets: list[float] = field(default_factory=lambda: [0.15, 0.25, 0.35, 0.5, 0.75])
    # per budget: the most accurate subnets under it, each grown toward it and scored again
    refine: int = 3
    bn_batches: int = 10  # training batches each subnet's BatchNorm statistics are estimated on
    finetune: bool = False  # fine-tune each export (the finetune section's recipe)


@dataclass
class LatencyConfig:
    """Where a latency target's milliseconds are spent: the device and runtime the model will
    run on, at which batch size. Its table is measured once per space, device, runtime and batch
    (cached in cache_dir) unless `table` names one measured elsewhere (`maskednas latency`)."""
    device: str = "cpu"  # cpu | cuda | cuda:N
    runtime: str = "torch"  # torch (eager) | onnxruntime (CPU)
    batch: int = 1
    table: str | None = None  # a latency table JSON file measured for this space and device
    grid_points: int = 4  # widths per channel group (from 1 to the full width)
    repeats: int = 15  # timed runs per grid point and round (their median is taken)
    rounds: int = 3  # passes over the table, seconds apart: each point keeps its lowest median
    cache_dir: str | None = None  # default: <out_dir>/latency-tables


@dataclass
class DeriveConfig:
    # the one cost target derivation meets, with its absolute value (e.g. {macs: 200000});
    # default: the search's target of the highest priority
    target: dict[str, float] = field(default_factory=dict)
    tolerance: float = 0.03
    # not given, for a user's network with a latency target: latency.runtime's (latency.ROUND_TO)
    round_to: int = 1
    min_channels: int = 1
    # when the searched ops are too cheap for the target at full width, move the least
    # confident choices to costlier ops (false: keep the ops, derive the closest network)
    promote_ops: bool = True
    # a latency target: derivations re-aimed by the derived network's measured latency until it
    # is within 5% of the target's fraction of the dense network (latency/aim.py); 0: the table alone
    latency_corrections: int = 2
    # DARTS space: train the searched cells in a larger evaluation network from scratch (the
    # DARTS protocol uses 20 cells of 36 channels) instead of fine-tuning the slimmed search net
    eval_cells: int | None = None
    eval_channels: int = 36


@dataclass
class FinetuneConfig:
    epochs: int = 30
    optimizer: str = "sgd"  # sgd | adamw (transformers; momentum is its beta1)
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
class ExportConfig:
    """Extra ONNX artefacts beside model.onnx (fp32), each with its accuracy, size and latency."""
    quantize: list[str] = field(default_factory=list)  # any of fp16, int8
    calibration: str = "minmax"  # int8 activation ranges: minmax | entropy | percentile (measured)
    calibration_batches: int = 8  # training batches, preprocessed as for evaluation


@dataclass
class RunConfig:
    name: str | None = None  # run directory name under out_dir; default: <config>-<time>
    out_dir: str = "runs"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # bf16 autocast
    channels_last: bool = False
    log_every: int = 10  # steps between progress updates (each costs one host sync)
    threads: int | None = None  # torch CPU threads (per process)
    # under torchrun on GPUs: BatchNorm normalises with the statistics of the global batch
    # (torch's SyncBatchNorm), for per-rank batches too small for their own statistics
    sync_bn: bool = False
    space: str = "macro"  # a registered search space; the section of that name configures it
    space_config: Any = None  # that section, as the space's config dataclass (see `from_dict`)
    data: DataConfig = field(default_factory=DataConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    derive: DeriveConfig = field(default_factory=DeriveConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    front: FrontConfig = field(default_factory=FrontConfig)

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
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key} must be a mapping of names, got {value!r}")
        return {k: _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
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
    moved = [k for k in unknown if _join(prefix, k) in MOVED_KEYS]
    if moved:
        old, new = _join(prefix, moved[0]), MOVED_KEYS[_join(prefix, moved[0])]
        value = MOVED_VALUES.get(old, {}).get(data[moved[0]], data[moved[0]])
        why = {"search.arch_fraction": " with search.regime=bilevel, the regime it applies to"}.get(
            new, "; every registered cost target is configured this way" if ".target" in new else "")
        raise ConfigError(f"config key '{old}' is now '{new}' (write {new}={value}{why})")
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
        raise ConfigError(f"unknown space {space!r}; spaces are {', '.join(sorted(SPACES.names()))}")
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


def replaces_target_form(data: dict, key: str, raw: str) -> None:
    """`search.targets.NAME.value=V` replaces that target's fraction, and the other way round
    (`...fraction=null` only clears the fraction)."""
    parts = key.split(".")
    if raw.strip() not in ("null", "~", "") and len(parts) == 4 and parts[:2] == ["search", "targets"] and parts[3] in ("value", "fraction"):
        targets = data.get("search", {}).get("targets") if isinstance(data.get("search"), dict) else None
        goal = targets.get(parts[2]) if isinstance(targets, dict) else None
        if isinstance(goal, dict):
            goal.pop("fraction" if parts[3] == "value" else "value", None)


def apply_override(data: dict, assignment: str) -> None:
    """Apply `a.b.c=value` (value parsed as YAML) to a nested dict."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key=value, e.g. search.epochs=10")
    key, raw = assignment.split("=", 1)
    replaces_target_form(data, key.strip(), raw)
    *parents, leaf = key.strip().split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {key}: '{p}' is not a section")
    try:
        node[leaf] = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {assignment!r}: the value is not valid YAML "
                          f"({' '.join(str(e).split())})") from e


def shipped_configs() -> dict[str, Path]:
    """The configs installed with the package, by name: `--config digits` on the command line,
    `load_config("digits")` in Python.

    >>> from maskednas import shipped_configs
    >>> {"digits", "darts_digits", "prune_model"} <= set(shipped_configs())
    True
    """
    folder = importlib.resources.files("maskednas") / "configs"
    return {p.name[:-5]: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def config_path(name_or_path: str | Path) -> Path:
    """A shipped config's name, or the path of a YAML file: a value with a folder separator or a
    .yaml/.yml suffix is a path, anything else a name."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or os.sep in text or text.endswith((".yaml", ".yml")):
        return Path(text)
    shipped = shipped_configs()
    if text not in shipped:
        raise ConfigError(f"unknown config {text!r}; shipped configs: {', '.join(sorted(shipped))} "
                          f"(or the path of a YAML file, e.g. ./{text}.yaml)")
    return shipped[text]


def read_yaml(path: str | Path) -> dict:
    """A config file (a path, or a shipped config's name) as a dict; a missing, unreadable or
    malformed file is named."""
    path = config_path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections, got "
                          f"{type(data).__name__}")
    return data


# keys of the fixed target fields these replaced (refused with the new form in the message)
MOVED_KEYS = {"search.target.macs": "search.targets.macs.value",
              "search.target.macs_fraction": "search.targets.macs.fraction",
              "search.target.params": "search.targets.params.value",
              "search.target.params_fraction": "search.targets.params.fraction",
              "search.target.latency_ms": "search.targets.latency_ms.value",
              "search.target.latency_fraction": "search.targets.latency_ms.fraction",
              "derive.macs": "derive.target.macs", "derive.latency_ms": "derive.target.latency_ms",
              "data.val_fraction": "search.arch_fraction", "search.weight_data": "search.regime"}
# moved keys whose values were renamed too (old value -> new)
MOVED_VALUES = {"search.weight_data": {"all": "single_level", "split": "bilevel"}}


def upgrade_moved_keys(data: dict) -> list[str]:
    """A saved run's config (config.yaml, a checkpoint) in the current form: the fixed target
    fields it was written with become `search.targets` and `derive.target` (exactly the targets
    it had); a config written before the validation split holds none out. Returns what was
    moved, for the command to say."""
    moved, names = [], set()
    if isinstance(data.get("data"), dict) and "validation_fraction" not in data["data"]:
        data["data"]["validation_fraction"] = 0.0  # written before the split: it held none out
    for old, new in MOVED_KEYS.items():
        section, key = old.rsplit(".", 1)
        node = data
        for part in section.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or key not in node:
            continue
        value = node.pop(key)
        if value is None:
            continue
        value = MOVED_VALUES.get(old, {}).get(value, value)
        parts, target = new.split("."), data
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
        moved.append(f"{old} -> {new}")
        names |= {parts[2]} if parts[:2] == ["search", "targets"] else set()
    if names:  # the saved run's targets, and only those (not the defaults)
        targets = data["search"]["targets"]
        data["search"]["targets"] = {n: targets[n] for n in targets if n in names}
    return moved


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """The file's config (a path, or a shipped config's name) with the overrides applied.

    An override of one cost target adds to the file's targets, never drops one: with the file's
    `search.targets: {macs: {fraction: 0.4}}`, `search.targets.latency_ms.value=0.5` asks for
    both (`search.targets.macs=null` drops MACs; `search.targets={...}` replaces them all). A
    target's value replaces its own fraction (`search.targets.macs.value=3e5`), and the other way
    round.

    >>> from maskednas import load_config
    >>> cfg = load_config("digits", ["search.targets.params.fraction=0.5"])
    >>> sorted(cfg.search.targets)
    ['macs', 'params']
    """
    data = read_yaml(path) if path is not None else {}
    keys = [a.split("=", 1)[0].strip() for a in overrides]
    search = data.get("search")
    if any(k.startswith("search.targets.") for k in keys) and (search is None or (
            isinstance(search, dict) and search.get("targets") is None)):  # the defaults, then the override
        data.setdefault("search", {})["targets"] = to_dict(SearchConfig())["targets"]
    for assignment in overrides:
        apply_override(data, assignment)
    cfg = from_dict(RunConfig, data)
    if (data.get("derive") or {}).get("round_to") is None and cfg.space == "model" and uses_latency(cfg):
        cfg.derive.round_to = ROUND_TO.get(cfg.latency.runtime, 1)  # not given: the runtime's
    validate(cfg)
    return cfg


@dataclass(frozen=True)
class Range:
    """An allowed interval for a number; None: unbounded on that side."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, v) -> bool:
        return ((self.low is None or (v > self.low if self.low_open else v >= self.low)) and
                (self.high is None or (v < self.high if self.high_open else v <= self.high)))

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"


AT_LEAST_0, AT_LEAST_1, POSITIVE = Range(0), Range(1), Range(0, low_open=True)
UNIT, PROBABILITY = Range(0, 1, low_open=True), Range(0, 1, high_open=True)
# Every number's allowed range, in one place (a None value of an optional key is always allowed)
RANGES: dict[str, Range] = {
    "seed": AT_LEAST_0, "log_every": AT_LEAST_1, "threads": AT_LEAST_1,
    "data.image_size": AT_LEAST_1, "data.resize": AT_LEAST_1, "data.batch_size": AT_LEAST_1,
    "data.num_classes": Range(2),
    "data.validation_fraction": Range(0, 1, high_open=True), "data.validation_seed": AT_LEAST_0,
    "search.arch_fraction": Range(0, 1, low_open=True, high_open=True), "data.crop_padding": AT_LEAST_0,
    "search.arch_loss_weight": AT_LEAST_0, "search.kd_weight": Range(0, 1),
    "search.epochs": AT_LEAST_1, "search.warmup_epochs": AT_LEAST_0,
    "search.hessian_eps": POSITIVE, "search.w_lr": POSITIVE, "search.w_lr_min": AT_LEAST_0,
    "search.w_momentum": PROBABILITY, "search.w_weight_decay": AT_LEAST_0,
    "search.grad_clip": POSITIVE, "search.arch_lr": POSITIVE, "search.arch_weight_decay": AT_LEAST_0,
    "search.mask_weight_decay": AT_LEAST_0, "search.temperature_start": POSITIVE,
    "search.temperature_end": POSITIVE,
    "latency.batch": AT_LEAST_1, "latency.grid_points": Range(2),
    "latency.repeats": AT_LEAST_1, "latency.rounds": AT_LEAST_1, "search.target.weight": AT_LEAST_0, "search.target.surrogate_temperature": POSITIVE,
    "derive.tolerance": Range(0, 1, high_open=True),
    "derive.round_to": AT_LEAST_1, "derive.min_channels": AT_LEAST_1, "derive.eval_cells": AT_LEAST_1,
    "derive.latency_corrections": AT_LEAST_0,
    "derive.eval_channels": Range(2),
    "finetune.epochs": AT_LEAST_0, "finetune.lr": POSITIVE, "finetune.lr_min": AT_LEAST_0,
    "finetune.momentum": PROBABILITY, "finetune.weight_decay": AT_LEAST_0,
    "finetune.warmup_epochs": AT_LEAST_0, "finetune.kd_weight": Range(0, 1),
    "finetune.kd_temperature": POSITIVE, "finetune.ema_decay": Range(0, 1, True, True),
    "finetune.drop_path": PROBABILITY, "finetune.aux_weight": AT_LEAST_0, "finetune.cutout": AT_LEAST_0,
    "export.calibration_batches": AT_LEAST_1,
    "search.sandwich.random_subnets": AT_LEAST_0, "front.trials": Range(2),
    "front.timeout_s": POSITIVE, "front.population": Range(2), "front.bn_batches": AT_LEAST_1,
    "front.refine": AT_LEAST_1,
}
REGIMES = ("bilevel", "single_level")
SEARCH_STRATEGIES = ("differentiable", "sandwich")
FRONT_STRATEGIES = ("evolution", "bayesian", "random")
QUANTIZED = tuple(p for p in PRECISIONS if p != "fp32")


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Every range in RANGES, then the rules that tie keys together."""
    for key, allowed in RANGES.items():
        value = _get(cfg, key)
        if value is not None and value not in allowed:
            raise ConfigError(f"{key} must be {allowed}, got {value!r}")
    s, f = cfg.search, cfg.finetune
    cell_based = SPACES.get(cfg.space).cell_based
    checks = [
        (s.warmup_epochs <= s.epochs,
         f"search.warmup_epochs must be in [0, search.epochs={s.epochs}], got {s.warmup_epochs}"),
        (s.order in (1, 2), f"search.order must be 1 (first order) or 2 (second order), got {s.order}"),
        (s.strategy in SEARCH_STRATEGIES,
         f"search.strategy must be one of {', '.join(SEARCH_STRATEGIES)}, got {s.strategy!r}"),
        (s.strategy != "sandwich" or not cell_based,
         f"search.strategy=sandwich trains subnets of one op per choice; the {cfg.space!r} space "
         f"derives cells: use the macro or model space"),
        (s.strategy != "sandwich" or not search_goals(cfg),
         f"search.strategy=sandwich trains every subnet alike and penalises no cost, but "
         f"search.targets names {', '.join(search_goals(cfg))}: drop them (e.g. "
         f"search.targets.macs=null); the front's budgets are front.budgets"),
        (all(f in UNIT for f in s.sandwich.width_fractions) and 1.0 in s.sandwich.width_fractions,
         f"search.sandwich.width_fractions must be fractions in (0, 1], 1 among them (the full "
         f"width: budgets are fractions of the dense network), got {s.sandwich.width_fractions}"),
        (s.strategy != "sandwich" or (s.regime == "single_level" and s.arch_fraction is None),
         f"search.strategy=sandwich takes no architecture steps, so it holds no training images "
         f"out for them: drop search.regime={s.regime} and search.arch_fraction"),
        *((o in OPTIMIZERS, f"{key} must be one of {', '.join(OPTIMIZERS)}, got {o!r}")
          for key, o in (("search.w_optimizer", s.w_optimizer), ("finetune.optimizer", f.optimizer))),
        (s.order == 1 or s.w_optimizer == "sgd",
         f"search.order=2 differentiates through one virtual SGD step of the weights, but "
         f"search.w_optimizer={s.w_optimizer}: use search.order=1 or search.w_optimizer=sgd"),
        (s.regime in REGIMES,
         f"search.regime must be one of {', '.join(REGIMES)}, got {s.regime!r}"),
        (s.arch_fraction is None or s.regime == "bilevel",
         f"search.arch_fraction={s.arch_fraction} sets the architecture's part of the training "
         f"split in the bilevel regime; with search.regime={s.regime} the architecture steps on "
         f"all of it: add search.regime=bilevel or drop search.arch_fraction"),
        (not getattr(cfg.space_config, "mask_init_from", "constant") == "magnitude"
         or getattr(cfg.space_config, "has_trained_weights", False),
         f"{cfg.space}.mask_init_from=magnitude ranks channels by the magnitudes of trained "
         f"weights, but {cfg.space}.checkpoint is unset and {cfg.space}.pretrained is false; give "
         f"a checkpoint or use {cfg.space}.mask_init_from=constant"),
        (s.kd_weight == 0 or getattr(cfg.space_config, "has_trained_weights", False),
         f"search.kd_weight distils from the network as it was before pruning: the model space "
         f"with model.checkpoint or model.pretrained=true has one, this {cfg.space} run does not; "
         f"set search.kd_weight=0"),
        (f.warmup_epochs <= max(f.epochs, 0),
         f"finetune.warmup_epochs must be in [0, finetune.epochs={f.epochs}], got {f.warmup_epochs}"),
        (s.target.estimator in ESTIMATORS.names(),
         f"search.target.estimator must be one of {', '.join(sorted(ESTIMATORS.names()))}, "
         f"got {s.target.estimator!r}"),
        (cfg.derive.eval_cells is None or cell_based,
         f"derive.eval_cells builds a DARTS evaluation network of cells; the {cfg.space!r} space "
         f"has no cells"),
        (f.kd_weight == 0 or getattr(cfg.space_config, "has_trained_weights", True),
         f"finetune.kd_weight distils from the network as it was before pruning, but "
         f"{cfg.space}.checkpoint is unset and {cfg.space}.pretrained is false: that network is "
         f"random; give a checkpoint or set finetune.kd_weight=0"),
        (f.aux_weight == 0 or cell_based,
         f"finetune.aux_weight adds DARTS' auxiliary head to a cell network; the {cfg.space!r} "
         f"space has no cells"),
        (all(q in QUANTIZED for q in cfg.export.quantize),
         f"export.quantize must list precisions from {', '.join(QUANTIZED)}, got "
         f"{cfg.export.quantize}"),
        (cfg.export.calibration in CALIBRATIONS,
         f"export.calibration must be one of {', '.join(CALIBRATIONS)}, got {cfg.export.calibration!r}"),
        (cfg.device == "auto" or is_device_name(cfg.device),
         f"device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}"),
        (is_device_name(cfg.latency.device),
         f"latency.device must be cpu, cuda or cuda:N, got {cfg.latency.device!r}"),
        (cfg.latency.runtime in RUNTIMES,
         f"latency.runtime must be one of {', '.join(RUNTIMES)}, got {cfg.latency.runtime!r}"),
        (cfg.latency.runtime != "onnxruntime" or cfg.latency.device == "cpu",
         f"latency.runtime=onnxruntime runs on the CPU (CPUExecutionProvider); set "
         f"latency.device=cpu, or latency.runtime=torch for {cfg.latency.device}"),
    ]
    checks += target_checks(cfg) + front_checks(cfg)
    checks.append((cfg.name is None or is_plain_name(cfg.name), plain_name_error("name", cfg.name)))
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    cfg.space_config.validate()


def is_device_name(name: str) -> bool:
    return name in ("cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())


def search_goals(cfg: RunConfig) -> dict[str, TargetGoal]:
    """The search's cost targets, without the ones set to null."""
    return {name: goal for name, goal in cfg.search.targets.items() if goal is not None}


def target_checks(cfg: RunConfig) -> list[tuple[bool, str]]:
    """Every target named is registered, has one value in range, and suits the space."""
    goals, derive = search_goals(cfg), cfg.derive.target
    registered = ", ".join(COST_TARGETS.names())
    space = SPACES.get(cfg.space)
    checks = [(len(derive) <= 1, f"derive.target names the one target derivation meets, got "
                                 f"{', '.join(derive)}")]
    for where, names in (("search.targets", goals), ("derive.target", derive)):
        for name in names:
            if name not in COST_TARGETS.names():
                return [(False, f"{where}.{name}: unknown cost target {name!r}; registered: {registered}")]
            why = COST_TARGETS.get(name).unavailable(space)
            if why:
                have = [n for n in SPACES.names() if not COST_TARGETS.get(name).unavailable(SPACES.get(n))]
                checks.append((False, f"the {cfg.space!r} space {why}, so it cannot have the {name} "
                                      f"target ({where}.{name}); spaces with it: {', '.join(have)}"))
    for name, goal in goals.items():
        key = f"search.targets.{name}"
        checks += [((goal.value is None) != (goal.fraction is None),
                    f"{key} needs exactly one of value (in the target's unit) and fraction (of the "
                    f"dense network's), got {to_dict(goal)}"),
                   (goal.value is None or goal.value in POSITIVE, f"{key}.value must be {POSITIVE}, got {goal.value!r}"),
                   (goal.fraction is None or goal.fraction in UNIT,
                    f"{key}.fraction must be {UNIT}, got {goal.fraction!r}")]
    checks += [(value in POSITIVE, f"derive.target.{name} must be {POSITIVE}, got {value!r}")
               for name, value in derive.items()]
    return checks


def front_checks(cfg: RunConfig) -> list[tuple[bool, str]]:
    """The front's strategy, objectives, constraints and budgets."""
    fr, space = cfg.front, SPACES.get(cfg.space)
    names = [f"{b:g}" for b in fr.budgets]
    checks = [(len(set(names)) == len(names), f"front.budgets names a budget twice: {fr.budgets}"),
              (is_plain_name(fr.name), plain_name_error("front.name", fr.name)),
              (fr.strategy in FRONT_STRATEGIES,
               f"front.strategy must be one of {', '.join(FRONT_STRATEGIES)}, got {fr.strategy!r}"),
              (bool(fr.objectives), "front.objectives names at least one cost target, e.g. [macs]"),
              (bool(fr.budgets) and all(b in UNIT for b in fr.budgets),
               f"front.budgets must be fractions in (0, 1] of the dense network's "
               f"{fr.objectives[0] if fr.objectives else 'cost'}, got {fr.budgets}")]
    for where, names in (("front.objectives", fr.objectives), ("front.constraints", fr.constraints)):
        for name in names:
            if name not in COST_TARGETS.names():
                return [(False, f"{where}: unknown cost target {name!r}; registered: "
                                f"{', '.join(COST_TARGETS.names())}")]
            why = COST_TARGETS.get(name).unavailable(space)
            checks.append((not why, f"the {cfg.space!r} space {why}, so {where} cannot name {name}"))
    for name, goal in fr.constraints.items():
        checks.append((goal is not None and (goal.value is None) != (goal.fraction is None)
                       and (goal.value is None or goal.value in POSITIVE)
                       and (goal.fraction is None or goal.fraction in UNIT),
                       f"front.constraints.{name} needs exactly one of value (> 0) and fraction "
                       f"(in (0, 1]), got {to_dict(goal) if goal is not None else None}"))
    return checks


def uses_latency(cfg: RunConfig) -> bool:
    """Whether the run has a latency target (and so measures or reads a latency table)."""
    return any(COST_TARGETS.get(n).needs_latency_table
               for n in [*search_goals(cfg), *cfg.derive.target, *cfg.front.objectives, *cfg.front.constraints]
               if n in COST_TARGETS.names())


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def is_plain_name(name: str) -> bool:
    """A run or export name is one folder name: letters, digits, '.', '_', '-', no path."""
    return isinstance(name, str) and len(name) <= 128 and bool(_NAME.fullmatch(name))


def plain_name_error(what: str, name) -> str:
    return (f"{what} must be a plain folder name (letters, digits, '.', '_', '-'; starting with a "
            f"letter or digit; no '/' and no '..'), got {name!r}")


# What an existing run may change. `--resume` continues the same search: its learning rates,
# length and logging may change, nothing that shapes the supernet, the data or the objective
# (`data.num_classes` only declares the count the data must have: the checkpoint's, checked).
# `--run` derives again from a finished search: only the later stages' settings may change.
RESUME_MAY_CHANGE = ("search.epochs", "search.w_lr", "search.w_lr_min", "search.arch_lr",
                     "log_every", "threads", "device", "sync_bn", "derive.", "finetune.",
                     "export.", "front.", "data.num_classes")
LATER_STAGES_MAY_CHANGE = ("log_every", "threads", "device", "sync_bn", "seed", "amp",
                           "channels_last", "derive.", "finetune.", "export.", "front.",
                           "data.num_classes")


def flat_dict(d: dict, prefix: str = "") -> dict:
    """A nested dict as one level of dotted keys (`search.target.macs`)."""
    out = {}
    for k, v in d.items():
        out.update(flat_dict(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_changes(before: RunConfig, after: RunConfig, allowed: tuple[str, ...], mode: str) -> None:
    """Refuse, naming the key, any change from `before` to `after` outside `allowed` (keys, or
    section prefixes ending in '.')."""
    old, new = flat_dict(to_dict(before)), flat_dict(to_dict(after))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    refused = [k for k in changed if not any(k == a or (a.endswith(".") and k.startswith(a))
                                             for a in allowed)]
    if refused:
        k = refused[0]
        raise ConfigError(f"{mode} cannot change {k} (the run has {old.get(k)!r}, this asks for "
                          f"{new.get(k)!r}); it may change {', '.join(a + '*' if a.endswith('.') else a for a in allowed)}. "
                          f"Start a new run (another name=...) to change it")
