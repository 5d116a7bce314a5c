"""The pipeline as a library: search -> derive -> slim -> BN recalibration -> fine-tune -> export
-> summary, for one resolved config and one run directory.

    from maskednas.pipeline import load_config, run
    metrics = run(load_config("digits", ["search.epochs=5"]), Path("runs/x"))

`train.py` adds argument parsing, run-directory rules and error messages on top; the benchmarks
call `run` (or the stage functions) directly.

Under torchrun every rank runs the search, derivation, BN recalibration, fine-tuning and the
test evaluation (each on its shards); rank 0 alone then times, exports and writes the summary.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from maskednas import parallel
from maskednas.common import atomic_write
from maskednas.datasource import ImageData, TokenData
from maskednas.derive import Derivation, derive, slim
from maskednas.derive.discretize import Budget, budget as bind_budget, search_budget
from maskednas.derive.equivalence import check_equivalence
from maskednas.export import save_export
from maskednas.export.architecture import evaluation_architecture
from maskednas.export.compact import build
from maskednas.export.hf_models import example_input
from maskednas.export.latency import latencies_ms
from maskednas.latency import LatencyModel, models_ms
from maskednas.latency.aim import aim_by_measurement
from maskednas.pipeline.config import ConfigError, RunConfig, flat_dict, to_dict
from maskednas.pipeline.setup import (DataMeta, TrainingContext, apply_threads, check_data_fits_model,
                                      latency_model, load_data,
                                      prepare_search,
                                      restore_supernet, seed_everything, select_device)
from maskednas.pipeline.summary import latency_table, onnx_table, summary_table
from maskednas.search.checkpoint import load_checkpoint
from maskednas.search.loop import Searcher
from maskednas.search.penalty import bind_targets
from maskednas.supernet.targets import COST_TARGETS
from maskednas.search.tensorboard_log import SearchLogger
from maskednas.supernet import Supernet
from maskednas.training.finetune import recalibrate_batchnorm

STAGES = ("search", "derive", "finetune", "export")
Report = Callable[[str], None]


def check_stages(stages: Sequence[str]) -> list[str]:
    """The stages to run, validated: known names, in pipeline order, derive before its users."""
    stages = list(stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage {unknown[0]!r}; stages are {', '.join(STAGES)}")
    if stages != sorted(stages, key=STAGES.index):
        raise ConfigError(f"stages must come in the order {','.join(STAGES)}, got {','.join(stages)}")
    if {"finetune", "export"} & set(stages) and "derive" not in stages:
        raise ConfigError("finetune and export work on a derived model: include 'derive'")
    return stages


@dataclass
class SearchOutcome:
    net: Supernet
    targets: dict[str, float]  # cost target -> value
    metrics: dict  # the last search epoch's (empty if none ran)
    logger: SearchLogger | None = None  # the run's TensorBoard writer, still open
    latency: LatencyModel | None = None  # the run's latency table, when it has a latency target


@dataclass
class Slimmed:
    derivation: Derivation
    model: torch.nn.Module
    gap: float  # max |slimmed - hard-masked supernet| on a real batch
    scale: float  # max |hard-masked supernet output| on that batch (the gap is ~1e-7 of it)


@dataclass
class Chosen:
    """A derivation made elsewhere (a point of the front), the budget it was chosen for, and what
    its fine-tune distils from (None: the space's `distillation_teacher`)."""
    derivation: Derivation
    budget: Budget
    teacher: torch.nn.Module | None = None


def search(cfg: RunConfig, run_dir: Path, data: ImageData, resume: bool = False,
           tensorboard: bool = True, report: Report = print) -> SearchOutcome:
    """Run (or resume) the bilevel search; the checkpoint is `run_dir/search.pt`. The returned
    TensorBoard logger stays open for the later stages (close it when done)."""
    start = time.perf_counter()
    searcher = prepare_search(cfg, run_dir, data,
                              logger_factory=SearchLogger if tensorboard else None)
    if resume and searcher.checkpoint_path.is_file():
        searcher.resume()
        report(f"resumed {run_dir} at epoch {searcher.epoch}/{cfg.search.epochs}")
    elif resume:
        report(f"{searcher.checkpoint_path} does not exist yet: starting the search from epoch 0")
    report(f"targets: {describe_targets(searcher.targets)}")
    if parallel.size() > 1:
        report(f"{parallel.size()} ranks ({torch.distributed.get_backend()}): global batch "
               f"{searcher.train_loader.batch_size}, {searcher.train_loader.batch_size // parallel.size()} "
               f"per rank")
    metrics = searcher.run()
    net = parallel.plain_batchnorm(searcher.net) if cfg.sync_bn else searcher.net
    seconds = time.perf_counter() - start
    if cfg.search.strategy == "sandwich":
        report(f"supernet trained in {seconds:.0f}s: train acc of the largest subnet "
               f"{metrics['train_acc']:.3f} ({metrics['largest_macs']:,.0f} MACs), of the smallest "
               f"{metrics['smallest_acc']:.3f} ({metrics['smallest_macs']:,.0f} MACs)")
        return SearchOutcome(net, searcher.targets, metrics, searcher.logger, searcher.latency)
    others = "".join(f", {t.label} {t.show(metrics[f'discrete_{name}'])}"
                     for name in searcher.targets if name != "macs"
                     for t in [COST_TARGETS.get(name)])
    report(f"search done in {seconds:.0f}s: arch-batch acc {metrics['arch_acc']:.3f}, "
           f"MACs of the derived network {metrics['discrete_macs']:,.0f} "
           f"(soft expectation {metrics['expected_macs']:,.0f}){others}")
    return SearchOutcome(net, searcher.targets, metrics, searcher.logger, searcher.latency)


def describe_targets(targets: dict[str, float]) -> str:
    return ", ".join(COST_TARGETS.get(name).show(value)
                     for name, value in targets.items()) or "none (no cost penalty)"


def load_search(cfg: RunConfig, run_dir: Path) -> SearchOutcome:
    """The searched supernet of an earlier run, from its checkpoint."""
    state = load_checkpoint(run_dir / Searcher.CHECKPOINT, "search", select_device(cfg.device))
    if state["epoch"] < cfg.search.epochs:
        print(f"warning: the search in {run_dir} stopped at epoch {state['epoch']}/"
              f"{cfg.search.epochs}; deriving from it anyway", file=sys.stderr)
    net, _, _ = restore_supernet(state, select_device(cfg.device))
    targets = {name: v for name, v in state["targets"].items() if v is not None}
    return SearchOutcome(net, targets,
                         state["history"][-1] if state["history"] else {},
                         latency=latency_model(cfg, net, run_dir))


def configured_derivation(cfg: RunConfig, net: Supernet, meta: DataMeta,
                          target: float | Budget | None) -> Derivation:
    """`derive` with the run's derive.* settings."""
    d = cfg.derive
    return derive(net, target, d.tolerance, d.round_to, d.min_channels, meta.mean, meta.std,
                  promote_ops=d.promote_ops)


def derive_and_slim(cfg: RunConfig, net: Supernet, meta: DataMeta, target: float | Budget | None,
                    probe: torch.Tensor, derivation: Derivation | None = None) -> Slimmed:
    """Derive the architecture (unless `derivation` is given: a point of the front), slim the
    supernet into it, and check on a real batch that the compact model computes what the
    hard-masked supernet does (it stops the run if not)."""
    net.eval()
    if derivation is None:
        derivation = configured_derivation(cfg, net, meta, target)
    compact = slim(net, derivation).eval()
    same = check_equivalence(net, derivation, compact, probe)
    if cfg.channels_last:
        compact = compact.to(memory_format=torch.channels_last)
    return Slimmed(derivation, compact, same.gap, same.scale)


def aimed_by_measurement(cfg: RunConfig, net: Supernet, meta: DataMeta, budget: Budget,
                         latency: LatencyModel) -> tuple[Budget, dict]:
    """The latency budget re-aimed so that the derived network's measured fraction of the dense
    one is the target's (latency/aim.py), timed as `latency_check` times them: by rank 0 alone,
    every rank then derives at its aim. Also returns what was tried, for metrics.json."""
    d, lat = cfg.derive, cfg.latency
    net.eval()

    def derive_at(ms: float) -> Derivation:
        return configured_derivation(cfg, net, meta, Budget(budget.cost, ms))

    def measure() -> dict:
        dense = build(net.dense_architecture(meta.mean, meta.std), trust_source=True)
        shape, device = (meta.in_channels, meta.input_size, meta.input_size), select_device(lat.device, "latency.device")

        def fraction(derivation: Derivation) -> float:
            ms = models_ms({"derived": slim(net, derivation).eval(), "dense": dense}, shape, device,
                           lat.runtime, lat.batch, cfg.channels_last)
            return ms["derived"] / ms["dense"]
        aimed = aim_by_measurement(derive_at, fraction, budget.target, latency.dense_ms(), d.latency_corrections,
                                   fastest_ms=latency.fastest_ms(d.min_channels))
        return {"aim_ms": aimed.aim_ms, "measured_fraction": aimed.measured_fraction, "tries": aimed.tries}

    aim = parallel.on_main(measure)
    return Budget(budget.cost, aim["aim_ms"]), aim


def derive_budget(cfg: RunConfig, net: Supernet, searched: SearchOutcome) -> Budget | None:
    """What derivation meets: derive.target, else the search's target of the highest priority
    (`search_budget`); None: the masks' own widths."""
    for name, value in cfg.derive.target.items():
        return bind_budget(name, net, value, searched.latency, cfg.latency.batch)
    return search_budget(net, searched.targets, searched.latency, cfg.latency.batch)


def target_figures(cfg: RunConfig, net: Supernet, searched: SearchOutcome, budget: Budget | None,
                   arch, dense) -> dict:
    """`target_<name>` of every target the run penalised or derived to (derivation's value where
    it met one; `target_macs` is always there, None without a MACs target), and `cost_targets`:
    each one's target, dense and exported figures, for the summary and metrics.json."""
    targets = dict(searched.targets)
    if budget is not None:
        targets[budget.cost.name] = budget.target
    bound = bind_targets(targets, net, searched.latency, cfg.latency.batch)
    return {"target_macs": targets.get("macs"), **{f"target_{n}": v for n, v in targets.items()},
            "cost_targets": {n: {"target": targets[n], "dense": t.of(dense), "exported": t.of(arch)}
                             for n, t in bound.items()}}


def latency_check(cfg: RunConfig, latency: LatencyModel, arch, dense, compact: torch.nn.Module,
                  budget: Budget | None) -> dict:
    """The exported and the dense model timed on the latency device and runtime, as the table's
    parts were (onnxruntime: exported to ONNX the same way), against the table's predictions."""
    lat, shape = cfg.latency, (arch.in_channels, arch.input_size, arch.input_size)
    device = select_device(lat.device, "latency.device")
    dense_model = build(dense, trust_source=True)  # the run's own config names the source
    measured = models_ms({"exported": compact, "dense": dense_model}, shape, device, lat.runtime,
                         lat.batch, cfg.channels_last)
    predicted = {"exported": latency.architecture_ms(arch), "dense": latency.architecture_ms(dense)}
    return {"device": latency.meta["device"], "runtime": lat.runtime, "batch": lat.batch,
            "target_ms": budget.target if budget and budget.cost.name == "latency_ms" else None,
            **{f"{k}_predicted_ms": v for k, v in predicted.items()},
            **{f"{k}_measured_ms": v for k, v in measured.items()},
            "prediction_error": measured["exported"] / predicted["exported"] - 1,
            "prediction_error_ms": measured["exported"] - predicted["exported"],
            # the same against the dense network timed alongside: free of the machine's drift
            # between the table's measurement and this one (shared machines drift up to 2x)
            "relative_prediction_error": (measured["exported"] / measured["dense"])
            / (predicted["exported"] / predicted["dense"]) - 1}


def cpu_latencies(models: dict[str, torch.nn.Module], shape: tuple[int, ...],
                  channels_last: bool, example_of=None) -> dict[str, float]:
    """Each model timed at batch 1 and 64, all in the run's memory format (a speed-up between
    formats would be the layout's, not the search's), on random images of `shape` or on
    `example_of(batch)` (token ids)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    models = {name: m.to(memory_format=layout) for name, m in models.items()}
    out = {}
    for batch in (1, 64):
        timed = (latencies_ms(models, (batch, *shape)) if example_of is None
                 else latencies_ms(models, (), inputs=example_of(batch)))
        out.update({f"{name}_b{batch}": ms for name, ms in timed.items()})
    return out


def derive_and_export(cfg: RunConfig, run_dir: Path, data: ImageData, searched: SearchOutcome,
                      stages: Sequence[str], export_name: str = "export",
                      logger: SearchLogger | None = None, report: Report = print,
                      chosen: Chosen | None = None) -> dict:
    """Every stage after the search; returns the metrics (also written to
    `run_dir/summary-<export_name>.json`). `chosen`: a point of the front, exported instead of
    deriving from the masks."""
    seed_everything(cfg.seed)
    start = time.perf_counter()
    net = searched.net
    ctx = TrainingContext(cfg, data, next(net.parameters()).device)
    train_loader = ctx.train_loader()
    derivation, budget = (chosen.derivation, chosen.budget) if chosen else (
        None, derive_budget(cfg, net, searched))

    aim, aimed = budget, None
    if (derivation is None and budget is not None and budget.cost.name == "latency_ms"
            and searched.latency is not None and cfg.derive.latency_corrections > 0):
        aim, aimed = aimed_by_measurement(cfg, net, ctx.meta, budget, searched.latency)
        report(f"latency aimed by measurement: {len(aimed['tries'])} derivation(s), the kept one measured "
               f"{aimed['measured_fraction']:.3f} of the dense network (target "
               f"{budget.target / searched.latency.dense_ms():.3f}), aimed at {aimed['aim_ms']:.3f} ms of the table")
    probe = next(iter(ctx.val_loader or ctx.test_loader))[0]  # the test set is for the report
    slimmed = derive_and_slim(cfg, net, ctx.meta, aim, probe, derivation)
    compact = slimmed.model
    recalibrate_batchnorm(compact, train_loader)
    slim_test, slim_val = ctx.evaluate(compact), ctx.validate(compact)
    slim_acc, slim_val_acc = slim_test["acc"], slim_val["acc"]
    cost = slimmed.derivation.arch.cost()
    reached = (f"{budget.show(budget.of(slimmed.derivation.arch))} (target "
               f"{budget.show(budget.target)})" if budget else f"{cost.macs:,.0f} MACs (no target)")
    report(f"derived: {reached}, slimmed == hard-masked supernet within {slimmed.gap:.1e} "
           f"(logits up to {slimmed.scale:.3g}), test acc after BN recalibration {slim_acc:.4f}")
    if cfg.derive.eval_cells:  # DARTS protocol: the genotype in a larger network, from scratch
        arch = evaluation_architecture(slimmed.derivation.arch, cfg.derive.eval_cells,
                                       cfg.derive.eval_channels)
        compact, cost = ctx.prepare(build(arch)), arch.cost()
        report(f"evaluation network: {len(arch.cells)} cells, {cfg.derive.eval_channels} channels, "
               f"{cost.macs:,.0f} MACs, {cost.params:,.0f} params, trained from scratch")
    if "finetune" in stages:
        # the space's teacher (the soft supernet; a user's network as it was before pruning)
        # is distilled from when finetune.kd_weight > 0
        teacher = chosen.teacher if chosen and chosen.teacher is not None else net.distillation_teacher()
        compact = ctx.train(compact, teacher=teacher, logger=logger,
                            train_loader=train_loader)
    test_metrics, val_metrics = ctx.evaluate(compact), ctx.validate(compact)

    meta, tokens = ctx.meta, isinstance(data, TokenData)
    dense = net.dense_architecture(meta.mean, meta.std)
    dense_cost = dense.cost()
    metrics = {
        **(perplexities(test_metrics, val_metrics) if tokens else {}),
        **({f"slimmed_{k}": v for k, v in perplexities(slim_test, slim_val).items()} if tokens else {}),
        "test_acc": test_metrics["acc"], "test_loss": test_metrics["loss"],
        "val_acc": val_metrics["acc"], "val_loss": val_metrics["loss"],
        "slimmed_test_acc": slim_acc, "slimmed_val_acc": slim_val_acc,
        "slim_max_abs_diff": slimmed.gap,
        "slim_output_scale": slimmed.scale,
        "macs": cost.macs, "params": cost.params,
        **target_figures(cfg, net, searched, budget, slimmed.derivation.arch, dense),
        "dense_macs": dense_cost.macs, "dense_params": dense_cost.params,
        "search_arch_acc": searched.metrics.get("arch_acc"), "data": asdict(meta),
        "from_scratch": cfg.finetune.from_scratch or bool(cfg.derive.eval_cells),
    }
    for name, f in metrics["cost_targets"].items():  # derivation meets one target; say of the rest
        if (budget is None or name != budget.cost.name) and abs(f["exported"] / f["target"] - 1) > cfg.derive.tolerance:
            show = COST_TARGETS.get(name).show
            report(f"note: the {COST_TARGETS.get(name).label} target was penalised, not met: the export "
                   f"has {show(f['exported'])}, the target is {show(f['target'])} (derivation meets "
                   f"{budget.name if budget else 'no target'}; derive.target.{name}=... meets this one)")
    if not parallel.is_main():  # the other ranks are done; rank 0 times, exports and reports
        return metrics
    dense_model = build(dense, trust_source=True)  # the run's own config names the source
    metrics["cpu_latency_ms"] = cpu_latencies({"dense": dense_model, "slim": compact},
                                              (meta.in_channels, meta.input_size, meta.input_size),
                                              cfg.channels_last,
                                              (lambda b: example_input(dense, b)) if tokens else None)
    if searched.latency is not None:  # the table's prediction against the derived model, timed
        metrics["latency"] = latency_check(cfg, searched.latency, slimmed.derivation.arch, dense,
                                           compact, budget)
        metrics["latency"]["aimed_by_measurement"] = aimed
    if "export" in stages and tokens:  # ONNX Runtime's scoring and int8 calibration read images
        metrics = save_export(run_dir / export_name, compact.cpu(), to_dict(cfg), metrics)
    elif "export" in stages:
        e = cfg.export
        test = ctx.arrays("test")
        metrics = save_export(
            run_dir / export_name, compact.cpu(), to_dict(cfg), metrics, quantize=e.quantize,
            calibration=[x for x, _ in ctx.arrays("train", e.calibration_batches)],
            calibration_method=e.calibration,
            test_set=(np.concatenate([x for x, _ in test]), np.concatenate([y for _, y in test])))

    report(summary_table(metrics))
    if metrics.get("latency"):
        report(latency_table(metrics["latency"]))
    if metrics.get("onnx"):
        report(onnx_table(metrics))
    if "export" in stages:
        report(f"exported to {run_dir / export_name} (export.load(...) rebuilds it); "
               f"TensorBoard: tensorboard --logdir {run_dir.parent}")
    report(f"derive + fine-tune + export took {time.perf_counter() - start:.0f}s")
    summary = json.dumps(metrics, indent=2)
    atomic_write(run_dir / f"summary-{export_name}.json", lambda tmp: Path(tmp).write_text(summary))
    return metrics


def perplexities(test: dict, val: dict) -> dict[str, float | None]:
    """A language model's test and validation perplexity: exp of the mean loss per token (its
    accuracy is next-token accuracy)."""
    return {"test_perplexity": math.exp(test["loss"]),
            "val_perplexity": None if val["loss"] is None else math.exp(val["loss"])}


def _silent(_: str) -> None:
    """The report of ranks other than 0: one rank speaks for all."""


def run(cfg: RunConfig, run_dir: str | Path, stages: Sequence[str] = STAGES, *,
        resume: bool = False, export_name: str = "export", data: ImageData | None = None,
        report: Report = print) -> dict:
    """Run `stages` of the pipeline for `cfg` in `run_dir`. Without 'search', the supernet comes
    from the run's checkpoint. Returns the metrics of the derived model ({} without 'derive').

    >>> import maskednas, tempfile
    >>> cfg = maskednas.load_config("digits", ["search.epochs=1", "search.warmup_epochs=0",
    ...                                        "finetune.epochs=0", "data.batch_size=256"])
    >>> run_dir = tempfile.mkdtemp()
    >>> metrics = maskednas.run(cfg, run_dir, report=lambda line: None)
    >>> metrics["macs"] == metrics["fvcore_flops"]  # the export's MACs, checked against fvcore
    True
    >>> maskednas.load(run_dir + "/export").arch.cost().macs == metrics["macs"]
    True
    """
    stages, run_dir = check_stages(stages), Path(run_dir)
    if cfg.search.strategy == "sandwich" and "derive" in stages:
        raise ConfigError("a supernet trained with search.strategy=sandwich holds a subnet for "
                          "every budget: `maskednas front` (maskednas.front) searches and exports "
                          "them; `run` stages after the search derive one network from the masks")
    apply_threads(cfg)  # later stages alone too: threads and subnormal flushing
    data = data or load_data(cfg)
    check_data_fits_model(cfg, data)
    if not parallel.is_main():
        report = _silent
    logger = None
    if "search" in stages:
        searched = search(cfg, run_dir, data, resume, report=report)
        logger = searched.logger
    metrics: dict = {}
    try:
        if "derive" in stages:
            if "search" not in stages:
                searched = load_search(cfg, run_dir)
            metrics = derive_and_export(cfg, run_dir, data, searched, stages, export_name, logger,
                                        report)
            if logger:
                logger.hyperparameters(flat_dict(to_dict(cfg)), {"test_acc": metrics["test_acc"],
                                                      "macs": metrics["macs"]})
    except BaseException:
        if logger:  # the error that stopped the run is the one to report, not a closing one
            with contextlib.suppress(OSError):
                logger.close()
        raise
    if logger:
        logger.close()
    return metrics
