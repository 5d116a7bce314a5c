"""TensorBoard view of a search: how every op probability and channel mask evolves.

Tags: `alpha/<choice>/<op>` (a choice is a macro layer or a DARTS edge such as `normal/n1<-s0`;
grouped per choice by a custom-scalar layout), `alpha/heatmap`, `mask/<group>` histograms,
`channels/<group>` kept counts, `cost/expected_<target>` and `cost/discrete_<target>` for MACs,
params and every cost target of the run, against `cost/target_<target>` (`cost/target_macs`,
`cost/target_latency_ms`, ...), the space's own statistics (DARTS: `skips/normal`, `skips/reduce`),
`loss/*`, `acc/*`, `lr/*`, `temperature`, the architecture as text, and the run's
hyperparameters.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402
from torch.utils.tensorboard.summary import hparams  # noqa: E402

from maskednas.common import write_error  # noqa: E402


def _reports_write_errors(method):
    """TensorBoard writes from a thread of its own and raises a failed write (a full disk) at
    the next call: make that one line naming the event folder. The events already written stay;
    the run's checkpoints are what a resume needs."""
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as e:
            raise write_error(self.log_dir, e, "the events written so far are kept") from e
    return wrapped


class SearchLogger:
    @_reports_write_errors
    def __init__(self, log_dir: str | Path, net, targets: dict[str, float]) -> None:
        """`targets`: the run's cost targets (name -> value), drawn against the search's figures."""
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(log_dir))
        self.targets = {f"target_{name}": value for name, value in targets.items()}
        rows = net.choice_rows(net.op_weights())
        layout = {"op probabilities": {
            row: ["Multiline", [f"alpha/{row}/{op}" for op in names]]
            for row, (names, _) in rows.items()}}
        layout["cost"] = {f"{name} vs target": ["Multiline", [
            f"cost/expected_{name}", f"cost/discrete_{name}", f"cost/target_{name}"]]
            for name in dict.fromkeys(["macs", *targets])}
        self.writer.add_custom_scalars(layout)

    @_reports_write_errors
    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    @_reports_write_errors
    @torch.no_grad()
    def architecture(self, net, epoch: int, costs: dict[str, float]) -> None:
        """Op probabilities, masks and kept channels of `net`; `costs` holds the epoch's
        expected_<target> and discrete_<target> figures (MACs, params and the run's targets) as
        the search loop computed them."""
        rows, gates = net.choice_rows(net.op_weights()), net.gates()
        kept = {group: mask.kept() for group, mask in net.masks.items()}
        for row, (names, weights) in rows.items():
            for op, p in zip(names, weights.tolist()):
                self.writer.add_scalar(f"alpha/{row}/{op}", p, epoch)
        if rows:  # a network without choices (a user's plain conv net) has no heatmap
            self.writer.add_figure("alpha/heatmap", heatmap(rows), epoch)
        for group, g in gates.items():
            self.writer.add_histogram(f"mask/{group}", g.float().cpu(), epoch)
            self.writer.add_scalar(f"channels/{group}", int(kept[group].sum()), epoch)
        for name, value in costs.items():
            self.writer.add_scalar(f"cost/{name}", value, epoch)
        for name, value in self.targets.items():
            self.writer.add_scalar(f"cost/{name}", value, epoch)
        self.scalars(net.arch_stats(), epoch)
        self.writer.add_text("architecture", net.describe(), epoch)
        self.writer.flush()  # once an epoch: a failed write surfaces at the epoch that made it

    @_reports_write_errors
    def hyperparameters(self, config: dict, metrics: dict[str, float]) -> None:
        """`config` as dotted keys (`pipeline.config.flat_dict`), written into this run's own
        event file, so one run is one TensorBoard run."""
        flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.items()}
        for summary in hparams(flat, {f"hparam/{k}": v for k, v in metrics.items()}):
            self.writer.file_writer.add_summary(summary)
        self.scalars({f"hparam/{k}": v for k, v in metrics.items()}, 0)

    @_reports_write_errors
    def front(self, result: dict, figure=None) -> None:
        """The front (search.front): its plot, its table, and each export's validation accuracy
        and first objective (`front/<export>/...`)."""
        if figure is not None:
            self.writer.add_figure("front/pareto", figure, close=False)
        self.writer.add_text("front/table", result["table"])
        first = result["objectives"][0]
        for name, row in result["picks"].items():
            self.scalars({f"front/{name}/val_acc": row["val_acc"], f"front/{name}/{first}": row[first]}, 0)
        self.writer.flush()

    @_reports_write_errors
    def close(self) -> None:
        self.writer.close()


def heatmap(rows: dict[str, tuple[tuple[str, ...], torch.Tensor]]):
    """Choices x ops image of op probabilities (blank where an op is not a candidate)."""
    ops = list(dict.fromkeys(op for names, _ in rows.values() for op in names))
    grid = [[math.nan] * len(ops) for _ in rows]
    for i, (names, weights) in enumerate(rows.values()):
        for op, p in zip(names, weights.tolist()):
            grid[i][ops.index(op)] = p
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(ops), 1 + 0.35 * len(rows)))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(ops)), ops, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), list(rows), fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig

