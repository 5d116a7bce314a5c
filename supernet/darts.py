"""The DARTS cell search space (Liu et al., 2019), with a learnable width mask per cell.

A stem, then `cells` cells; those at 1/3 and 2/3 depth are reduction cells (stride 2, twice the
width). Every cell has two inputs (the outputs of the two previous cells, each brought to the
cell's width by a 1x1 ReLU-conv-BN, or FactorizedReduce after a reduction), `nodes` intermediate
nodes, and one mixed edge from every earlier state to every node (14 edges for 4 nodes). Normal
cells share one alpha matrix and reduction cells another, as in DARTS; the cell output is the
concatenation of its nodes.

Pruning: all states of a cell (both preprocessed inputs and every node) are sums into one channel
group, so one mask per cell gates them all, and the middle of every separable conv follows it.
Pruning channel k of a cell removes it from every node, hence from all four copies in the
concatenated output that the next cells read. FactorizedReduce splits a group in halves, so cell
widths are kept in pairs, one channel from each half.

Derivation (as DARTS): per node, the two incoming edges whose strongest non-zero op is strongest,
each with that op. DARTS tends to collapse to skip connections; `aux_skip` offers the remedy of
DARTS- (Chu et al., 2021): every stride-1 edge also adds beta * x, beta decaying linearly from
`aux_skip` to 0 over the architecture search, so skip no longer needs to win alpha to pass
gradients. Search warm-up (alpha frozen) is the search loop's `warmup_epochs`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from maskednas.export.architecture import Architecture
from maskednas.export.cells import cell_chain, edge_stride, preprocess_cost, reduction_cells
from maskednas.ops import (ChannelMask, Cost, FactorizedReduce, Head, MixedOp, SharedInput, Stem, apply_gate,
                           get_op, is_zero, weighted_sum)
from maskednas.ops.candidates import ReLUConvBN, Zero
from maskednas.ops.cost import out_size
from maskednas.supernet.base import CopyPlan, Supernet, register_space

DARTS_PRIMITIVES = ["zero", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                    "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
KINDS = ("normal", "reduce")


@dataclass
class DartsSpaceConfig:
    channels: int = 16  # width of the first cells; doubled at each reduction
    cells: int = 8
    nodes: int = 4
    stem_multiplier: int = 3
    candidates: list[str] = field(default_factory=lambda: list(DARTS_PRIMITIVES))
    mask_init: float = 1.0
    aux_skip: float = 0.0  # DARTS- auxiliary skip weight at the start (0: off; the paper uses 1)
    fused: bool = True  # SearchCell's fused schedule; False runs the reference per-edge one

    def validate(self) -> None:
        for name in self.candidates:
            get_op(name)  # KeyError listing the registered ops
        if all(is_zero(n) for n in self.candidates):
            raise ValueError("the DARTS space needs at least one candidate op besides 'zero'")
        if self.channels < 2 or self.channels % 2:
            raise ValueError(f"darts.channels must be even and >= 2 (FactorizedReduce halves "
                             f"it), got {self.channels}")
        for key in ("cells", "nodes", "stem_multiplier"):
            if getattr(self, key) < 1:
                raise ValueError(f"darts.{key} must be >= 1, got {getattr(self, key)}")
        if self.aux_skip < 0:
            raise ValueError(f"darts.aux_skip must be >= 0, got {self.aux_skip}")


def node_edges(nodes: int) -> list[tuple[int, int]]:
    """(first edge, end) of every node's incoming edges; node i reads states 0 .. i+1."""
    spans, start = [], 0
    for i in range(nodes):
        spans.append((start, start + i + 2))
        start += i + 2
    return spans


def state_name(j: int) -> str:
    return f"s{j}" if j < 2 else f"n{j - 2}"


class SearchCell(nn.Module):
    """One cell of the supernet. `in_groups` are the (channel group, copies) its inputs hold.

    Two schedules compute the same function. Per edge (`fused=False`, as the reference DARTS
    code): every mixed op runs all its candidates on its input and sums them. Fused (default):
    the work all edges from one state share is done once (the ReLU that starts every conv op,
    pooling, identity), and each node sums the outputs of all its edges' ops in one contraction
    with their weights. In a search step (tens of thousands of small kernels) that cuts kernel
    launches and saved activations; only the order of float sums differs."""

    def __init__(self, index: int, reduction: bool, reduce_prev: bool, c_in: tuple[int, int],
                 channels: int, in_groups, size: int, names: list[str], nodes: int,
                 fused: bool = True) -> None:
        super().__init__()
        self.group, self.kind = f"c{index}", "reduce" if reduction else "normal"
        self.reduction, self.reduce_prev, self.in_groups = reduction, reduce_prev, in_groups
        self.channels, self.nodes, self.size, self.fused = channels, nodes, size, fused
        self.out_size = out_size(size, 2) if reduction else size
        self.preprocess0 = (FactorizedReduce(c_in[0], channels) if reduce_prev
                            else ReLUConvBN(c_in[0], channels, 1, kernel=1))
        self.preprocess1 = ReLUConvBN(c_in[1], channels, 1, kernel=1)
        self.spans = node_edges(nodes)  # per node, its incoming edges [start, end)
        self.sources = [j for i in range(nodes) for j in range(i + 2)]
        self.strides = [edge_stride(reduction, j) for j in self.sources]
        self.edges = nn.ModuleList(MixedOp(names, channels, channels, s, tied=True)
                                   for s in self.strides)
        self.n_ops = len(names)
        self.has_hidden = [get_op(n).has_hidden for n in names]
        self.kept_edges: list[bool] | None = None  # set by `restrict`: edges of the derived cell
        self._plan_terms()

    def restrict(self, rows: torch.Tensor | None) -> None:
        """Run only the edges with a non-zero row of the one-hot (edges, ops) `rows`, each with its
        op; `None` runs every edge and op again."""
        self.kept_edges = None if rows is None else rows.sum(1).bool().tolist()
        for e, mixed in enumerate(self.edges):
            mixed.restrict(None if rows is None else
                      int(rows[e].argmax()) if self.kept_edges[e] else None)
        self._plan_terms()

    def _plan_terms(self) -> None:
        """Per node, the (edge, op) pairs that run, and their flat indices into the weight matrix
        (a buffer, so the forward pass does no host-to-device copy)."""
        self.terms = []
        for i, (start, end) in enumerate(self.spans):
            pairs = [(e, o) for e in range(start, end)
                     if self.kept_edges is None or self.kept_edges[e]
                     for o, op in enumerate(self.edges[e].candidates.values())
                     if not isinstance(op, Zero) and self.edges[e].active in (None, o)]
            self.terms.append(pairs)
            index = torch.tensor([e * self.n_ops + o for e, o in pairs], dtype=torch.long)
            old = getattr(self, f"terms{i}", None)
            self.register_buffer(f"terms{i}", index if old is None else index.to(old.device),
                                 persistent=False)

    def forward(self, s0, s1, weights: torch.Tensor, gate: torch.Tensor, aux_skip: float):
        states = [apply_gate(self.preprocess0(s0), gate), apply_gate(self.preprocess1(s1), gate)]
        hidden = [gate if h else None for h in self.has_hidden]  # sep conv middles follow the cell
        node_fn = self._node_fused if self.fused else self._node_per_edge
        # what the edges read: the states themselves, or each wrapped with its shared work
        inputs = [SharedInput(x) for x in states] if self.fused else states
        for i, (start, end) in enumerate(self.spans):
            node = node_fn(i, inputs, weights, hidden)
            if aux_skip:
                for e in range(start, end):
                    if self.strides[e] == 1 and (self.kept_edges is None or self.kept_edges[e]):
                        node = node + aux_skip * states[self.sources[e]]
            node = apply_gate(node, gate)
            states.append(node)
            if self.fused:
                inputs.append(SharedInput(node))
        return torch.cat(states[2:], dim=1)

    def _node_per_edge(self, i, states, weights, hidden):
        node = None
        for e in range(*self.spans[i]):
            if self.kept_edges is None or self.kept_edges[e]:
                y = self.edges[e](states[self.sources[e]], weights[e], hidden)
                node = y if node is None else node + y
        return node

    def _node_fused(self, i, inputs, weights, hidden):
        if not self.terms[i]:  # only 'zero' ops run here (a hand-made genotype): zeros per edge
            return self._node_per_edge(i, [inp.x for inp in inputs], weights, hidden)
        outputs = []
        for e, o in self.terms[i]:
            op, inp = self.edges[e].candidates[self.edges[e].names[o]], inputs[self.sources[e]]
            if self.edges[e].parameter_free[o]:  # the same on every edge reading this state
                outputs.append(inp.shared_output((o, self.strides[e]), op))
            else:
                outputs.append(op.forward_shared(inp, hidden[o]))
        return weighted_sum(weights.flatten()[getattr(self, f"terms{i}")], outputs)


@register_space("darts", DartsSpaceConfig)
class DartsSupernet(Supernet):
    cell_based = True

    def __init__(self, space: DartsSpaceConfig, in_channels: int, num_classes: int,
                 input_size: int) -> None:
        super().__init__(space, in_channels, num_classes, input_size)
        self.names = tuple(space.candidates)
        self.aux_skip = space.aux_skip
        self.multiplier = space.nodes  # every node is concatenated into the cell output
        c_stem = space.stem_multiplier * space.channels
        self.stem = Stem(in_channels, c_stem)
        self.masks["stem"] = ChannelMask(c_stem, space.mask_init)
        reductions = reduction_cells(space.cells)
        cells, c, size = [], space.channels, input_size
        ins = [(("stem", 1), c_stem), (("stem", 1), c_stem)]  # (group, copies), channels
        reduce_prev = False
        for k in range(space.cells):
            reduction = k in reductions
            if reduction:
                if size % 2:
                    raise ValueError(f"reduction cell {k} gets {size}x{size} inputs; the DARTS "
                                     f"space needs input sizes that halve evenly (e.g. 32)")
                c *= 2
            cell = SearchCell(k, reduction, reduce_prev, (ins[0][1], ins[1][1]), c,
                              (ins[0][0], ins[1][0]), size, space.candidates, space.nodes,
                              space.fused)
            self.masks[cell.group] = ChannelMask(c, space.mask_init)
            cells.append(cell)
            ins = [ins[1], ((cell.group, self.multiplier), self.multiplier * c)]
            reduce_prev, size = reduction, cell.out_size
        self.cells = nn.ModuleList(cells)
        self.final_size = size
        self.head = Head(ins[1][1], num_classes)
        n_edges = len(cells[0].sources)
        for kind in KINDS:
            self.alphas[kind] = nn.Parameter(torch.zeros(n_edges, len(self.names)))
        self.register_buffer("zero_ops", torch.tensor([is_zero(n) for n in self.names]),
                             persistent=False)
        self._register_cost_coefficients()
        self.fixed_weights: dict[str, torch.Tensor] | None = None

    # -- schedules --------------------------------------------------------------------------------
    def set_progress(self, fraction: float) -> None:
        self.aux_skip = self.space.aux_skip * (1.0 - min(max(fraction, 0.0), 1.0))

    # -- op weights, selection, derivation ------------------------------------------------------
    def op_weights(self, temperature=None) -> dict[str, torch.Tensor]:
        """Per cell type, an (edges, ops) matrix: softmax(alpha / temperature) row by row, or the
        one-hot matrix of the derived cell after `restrict_ops`."""
        if self.fixed_weights is not None:
            return self.fixed_weights
        t = self.temperature if temperature is None else temperature
        return {k: torch.softmax(a / t, dim=-1) for k, a in self.alphas.items()}

    def op_logits(self) -> dict[str, torch.Tensor]:
        return self.fixed_weights if self.fixed_weights is not None else super().op_logits()

    def _strongest(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nonzero = w.masked_fill(self.zero_ops.to(w.device), float("-inf"))
        strength, best = nonzero.max(dim=-1)
        return strength, best

    def _kept_edges(self, strength: torch.Tensor) -> list[torch.Tensor]:
        """Per node, its two strongest incoming edges, strongest first (ties: lower index)."""
        return [torch.sort(strength[a:b], descending=True, stable=True).indices[:2] + a
                for a, b in node_edges(self.space.nodes)]

    def select(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One-hot rows on the strongest non-zero op of each node's two strongest edges; rows of
        dropped edges are all zero. Stays on the device (no host sync)."""
        out = {}
        for kind, w in scores.items():
            strength, best = self._strongest(w)
            keep = torch.zeros_like(strength, dtype=torch.bool)
            keep[torch.cat(self._kept_edges(strength))] = True
            out[kind] = nn.functional.one_hot(best, w.shape[-1]).to(w.dtype) * keep[:, None]
        return out

    @torch.no_grad()
    def derive_ops(self, scores: dict[str, torch.Tensor] | None = None) -> dict[str, list]:
        """The genotype: per cell type, two (op, source) pairs per node, strongest edge first
        (sources 0 and 1 are the cell inputs, 2.. the nodes), as DARTS' `genotype()` gives it:
        edges ranked by their best non-zero op's probability at temperature 1 (`op_logits`)."""
        scores = self.op_logits() if scores is None else scores
        genotype = {}
        for kind in KINDS:
            strength, best = self._strongest(scores[kind].double().cpu())
            sources = self.cells[0].sources
            genotype[kind] = [(self.names[int(best[e])], sources[e])
                              for top in self._kept_edges(strength) for e in top.tolist()]
        return genotype

    def edge_index(self, node: int, source: int) -> int:
        return node_edges(self.space.nodes)[node][0] + source

    def used_groups(self, genotype) -> list[str]:
        return list(self.masks)  # every cell exists whatever its ops

    def channel_step(self, group: str) -> int:
        return 1 if group == "stem" else 2

    def keep_channels(self, group: str, logits: torch.Tensor, count: int) -> torch.Tensor:
        """Cell groups keep `count / 2` channels from each half (FactorizedReduce's two convs)."""
        if group == "stem":
            return super().keep_channels(group, logits, count)
        half = logits.numel() // 2
        first = torch.topk(logits[:half], count // 2).indices
        second = torch.topk(logits[half:], count // 2).indices + half
        return torch.sort(torch.cat([first, second])).values

    def restrict_ops(self, genotype: dict[str, list] | None) -> None:
        """Run only the derived edges of `genotype`, each with its op (`None`: every edge)."""
        if genotype is None:
            self.fixed_weights = None
        else:
            n_edges, device = len(self.cells[0].sources), self.temperature.device
            self.fixed_weights = {}
            for kind in KINDS:
                hot = torch.zeros(n_edges, len(self.names), device=device)
                for i, (op, source) in enumerate(genotype[kind]):
                    hot[self.edge_index(i // 2, source), self.names.index(op)] = 1.0
                self.fixed_weights[kind] = hot
        for cell in self.cells:
            cell.restrict(None if genotype is None else self.fixed_weights[cell.kind])

    # -- records and slimming -------------------------------------------------------------------
    def architecture(self, genotype: dict[str, list], widths, mean=(), std=()) -> Architecture:
        cells = cell_chain(widths["stem"], [widths[c.group] for c in self.cells],
                           [c.reduction for c in self.cells], genotype, self.multiplier)
        return Architecture(self.in_channels, self.input_size, self.num_classes, widths["stem"], (),
                            tuple(mean), tuple(std), space=self.space_name, cells=cells)

    def copy_plan(self, model, arch: Architecture, keep) -> CopyPlan:
        def input_index(group: str, n: int) -> torch.Tensor:
            return copies(keep[group], self.masks[group].channels, n)

        plan = [(self.stem, model.stem, {"out": keep["stem"]})]
        for cell, compact, choice in zip(self.cells, model.cells, arch.cells):
            g = cell.group
            out = {"out": keep[g], "hidden": keep[g], **halves(keep[g], cell.channels)}
            for k, (pre, compact_pre) in enumerate(((cell.preprocess0, compact.preprocess0),
                                                    (cell.preprocess1, compact.preprocess1))):
                plan.append((pre, compact_pre, {"in": input_index(*cell.in_groups[k]), **out}))
            for i, (edge, compact_edge) in enumerate(zip(choice.edges, compact.edges)):
                mixed = cell.edges[self.edge_index(i // 2, edge.source)]
                plan.append((mixed.candidates[edge.op], compact_edge, {"in": keep[g], **out}))
        last = self.cells[-1]
        plan.append((self.head, model.head, {"in": input_index(last.group, self.multiplier)}))
        return plan

    def arch_stats(self) -> dict[str, float]:
        """Skip connections in the derived cells: DARTS' collapse shows as this count rising."""
        genotype = self.derive_ops()
        return {f"skips/{kind}": float(sum(get_op(op).cls.__name__ == "Skip" for op, _ in pairs))
                for kind, pairs in genotype.items()}

    def choice_rows(self, weights) -> dict[str, tuple[tuple[str, ...], torch.Tensor]]:
        """Per edge of each cell type (e.g. `normal/n1<-s0`): its op names and weights."""
        sources = self.cells[0].sources
        return {f"{kind}/n{node}<-{state_name(sources[e])}": (self.names, weights[kind][e])
                for kind in KINDS for node, (a, b) in enumerate(node_edges(self.space.nodes))
                for e in range(a, b)}

    @torch.no_grad()
    def describe(self) -> str:
        genotype = self.derive_ops()
        kept = {name: int(mask.kept().sum()) for name, mask in self.masks.items()}
        rows = ["| cell | type | channels | edges (op <- source) |", "|---|---|---|---|",
                f"| stem | | {kept['stem']}/{self.masks['stem'].channels} | |"]
        for k, cell in enumerate(self.cells):
            edges = ", ".join(f"{op}<-{state_name(src)}" for op, src in genotype[cell.kind])
            rows.append(f"| {k} | {cell.kind} | {kept[cell.group]}/{cell.channels} | {edges} |")
        return "\n".join(rows)

    # -- cost -----------------------------------------------------------------------------------
    def _register_cost_coefficients(self) -> None:
        """Edge costs are a*c^2 + b*c in the cell width c (input, output and sep-conv middle are
        all c): precomputing a and b per cell, edge and op makes the whole network's cost a few
        tensor ops, not thousands of scalar ones per architecture step."""
        coeff = torch.zeros(4, len(self.cells), len(self.cells[0].sources), len(self.names),
                            dtype=torch.float64)
        for k, cell in enumerate(self.cells):
            for e, (j, stride) in enumerate(zip(cell.sources, cell.strides)):
                size = cell.size if j < 2 else cell.out_size
                for o, name in enumerate(self.names):
                    f1, f2, f3 = (get_op(name).cost(c, c, stride, size, size, hidden=c, tied=True)
                                  for c in (2, 4, 6))  # even widths: FactorizedReduce halves them
                    for i, attr in enumerate(("macs", "params")):
                        v1, v2, v3 = (getattr(f, attr) for f in (f1, f2, f3))
                        a = (v2 - 2 * v1) / 8  # v = a c^2 + b c at c = 2 and 4
                        b = (v1 - 4 * a) / 2
                        if abs(36 * a + 6 * b - v3) > 1e-6 * max(abs(v3), 1):
                            raise AssertionError(f"cost of {name} is not quadratic in the width")
                        coeff[2 * i, k, e, o], coeff[2 * i + 1, k, e, o] = a, b
        self.register_buffer("edge_cost_coeff", coeff, persistent=False)
        self.register_buffer("cell_kind", torch.tensor([KINDS.index(c.kind) for c in self.cells]),
                             persistent=False)
        self.register_buffer("input_side", torch.tensor([float(c.size) for c in self.cells],
                                                        dtype=torch.float64), persistent=False)
        self.register_buffer("input_copies", torch.tensor(
            [[m for _, m in c.in_groups] for c in self.cells], dtype=torch.float64), persistent=False)

    def _widths(self, channels, groups) -> torch.Tensor:
        device = self.edge_cost_coeff.device
        return torch.stack([torch.as_tensor(channels[g], device=device).to(torch.float64)
                            for g in groups])

    def cost(self, weights, channels) -> Cost:
        c = self._widths(channels, [cell.group for cell in self.cells])
        w = torch.stack([weights[k] for k in KINDS]).to(torch.float64)[self.cell_kind]
        per_cell = (w * self.edge_cost_coeff).sum((-1, -2))  # (4, cells): a, b for MACs, params
        macs = (per_cell[0] * c ** 2 + per_cell[1] * c).sum()
        params = (per_cell[2] * c ** 2 + per_cell[3] * c).sum()
        c_in = self._widths(channels, [g for cell in self.cells for g, _ in cell.in_groups])
        c_in = c_in.view(-1, 2) * self.input_copies  # (cells, 2): widths of both inputs
        pre = preprocess_cost(c_in[:, 0], c, self.input_side) + preprocess_cost(c_in[:, 1], c, self.input_side)
        macs, params = macs + pre.macs.sum(), params + pre.params.sum()
        last = self.multiplier * channels[self.cells[-1].group]
        fixed = (Stem.cost(self.in_channels, channels["stem"], self.input_size, self.input_size)
                 + Head.cost(last, self.num_classes, self.final_size, self.final_size))
        return Cost(macs + fixed.macs, params + fixed.params)

    def op_scores(self, widths) -> dict[str, torch.Tensor]:
        """MACs of every op on every edge of the first cell of each type, at these widths."""
        scores = {}
        for kind in KINDS:
            k = next((i for i, cell in enumerate(self.cells) if cell.kind == kind), 0)
            c = float(widths[self.cells[k].group])
            scores[kind] = (self.edge_cost_coeff[0, k] * c ** 2 + self.edge_cost_coeff[1, k] * c).cpu()
        return scores

    # -- forward --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates, weights = self.gates(), self.op_weights()
        aux = 0.0 if self.fixed_weights is not None else self.aux_skip
        s0 = s1 = apply_gate(self.stem(x), gates["stem"])
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, weights[cell.kind], gates[cell.group], aux)
        return self.head(s1)


def halves(keep: torch.Tensor, channels: int) -> dict[str, torch.Tensor]:
    """Kept indices of the two halves of a group, as FactorizedReduce's two convs write them."""
    half = channels // 2
    a, b = keep[keep < half], keep[keep >= half] - half
    if len(a) != len(b):
        raise ValueError(f"FactorizedReduce needs as many kept channels in each half of its "
                         f"output, got {len(a)} and {len(b)}")
    return {"out_a": a, "out_b": b}


def copies(keep: torch.Tensor, channels: int, n: int) -> torch.Tensor:
    """Kept indices of a concatenation of `n` tensors of one group (a cell's output)."""
    return torch.cat([keep + i * channels for i in range(n)])
