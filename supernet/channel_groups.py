"""Channel groups of an arbitrary network, found by Torch-Pruning's `DependencyGraph`.

A group is a set of channels that must be pruned together: a residual stream and every layer
that adds into it, a depthwise conv and the layers around it, a concatenation's slices in every
layer that reads it, an SE block's scale and the tensor it scales. Torch-Pruning traces the
network's autograd graph and maps one channel index of the group's root layer to the matching
index of every layer in it (with the offsets of concatenations and the repeats of a flatten).

For each layer we keep its channel *spaces*: which groups its input and output channels belong
to, at which indices. Width, cost and gating are all computed from these spaces.
"""
from __future__ import annotations

import collections
import contextlib
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from maskednas.ops.layer_rules import LAYER_RULES, rule_for
from maskednas.supernet.graph_mapping import (SplitMappingError, mapped_by_the_forward,
                                              multiplies_activations)
from maskednas.supernet.opaque_attention import attention_pruner, opaque_attentions, projections


def supported_types() -> tuple[type, ...]:
    """The layer types some registered layer rule covers (ops/layer_rules)."""
    return tuple(dict.fromkeys(LAYER_RULES.get(n).layer_type for n in LAYER_RULES.names()))


@dataclass
class Slice:
    group: str
    index: torch.Tensor  # the layer's channel indices of group channels 0..n-1 (n * repeat long)
    repeat: int = 1  # a flatten spreads one channel over `repeat` features


@dataclass
class ChannelSpace:
    """One channel dimension of a layer: `size` channels, some of them in groups."""
    size: int
    slices: list[Slice] = field(default_factory=list)

    def width(self, widths) -> object:
        """Channel count at these group widths (ints, floats or tensors)."""
        fixed = self.size - sum(len(s.index) for s in self.slices)
        return fixed + sum(s.repeat * widths[s.group] for s in self.slices)

    def kept_positions(self, keep: dict[str, torch.Tensor]) -> torch.Tensor:
        """The positions a slimmed layer keeps, in order, given each group's 0/1 keep vector."""
        kept = torch.ones(self.size, dtype=torch.bool)
        for s in self.slices:
            kept[s.index.cpu()] = keep[s.group].cpu().bool().repeat_interleave(s.repeat)
        return torch.nonzero(kept).flatten()


@dataclass
class ChannelGroups:
    sizes: dict[str, int]  # group -> channels
    roots: dict[str, tuple[str, object]]  # group -> (root layer name, Torch-Pruning handler)
    inputs: dict[str, ChannelSpace]  # layer -> its input channels
    outputs: dict[str, ChannelSpace]  # layer -> its output channels
    params: dict[str, ChannelSpace]  # unwrapped parameter (e.g. ConvNeXt's layer scale) -> its channels
    skipped: dict[str, str]  # root layer -> why its group is left unpruned
    members: dict[str, set[str]] = field(default_factory=dict)  # group -> layer names
    # group -> the Torch-Pruning groups merged into it (a grouped convolution's output channels):
    # (root layer, handler, the merged group's channel matching each of this group's channels)
    linked: dict[str, list[tuple[str, object, torch.Tensor]]] = field(default_factory=dict)
    grouped_convs: list[str] = field(default_factory=list)  # pruned by whole groups
    # group -> Torch-Pruning's group magnitude importance of each channel (L2, over every layer
    # of the root's dependency group, divided by its mean: comparable across groups; a merged
    # grouped convolution's groups count by the root's alone); None where it fails
    importance: dict[str, torch.Tensor | None] = field(default_factory=dict)
    # group -> the root layer's channels in each of the group's channels ([size, k]), where ties
    # (chunks, channel shuffles) merged channels or groups; absent: channel i is the root's i
    own: dict[str, torch.Tensor] = field(default_factory=dict)
    tied: set[str] = field(default_factory=set)  # groups whose channels chunks, shuffles or loops tie

    def root_channels(self, group: str, channels) -> list[tuple[str, object, list[int]]]:
        """(root layer, Torch-Pruning handler, its channels) that make up these channels of
        `group`: what Torch-Pruning is asked to prune."""
        channels = torch.as_tensor(channels, dtype=torch.long)
        root, handler = self.roots[group]
        own = self.own.get(group)
        out = [(root, handler, channels if own is None else own[channels])]
        out += [(r, h, match[channels]) for r, h, match in self.linked.get(group, [])]
        return [(r, h, sorted(int(c) for c in m.flatten())) for r, h, m in out]


def group_key(name: str) -> str:
    """A ModuleDict key for a layer name (keys may not contain '.')."""
    return name.replace(".", "/")


def _why_unsupported(module: nn.Module) -> str | None:
    rule = rule_for(module)
    if rule is not None:
        return rule.unsupported(module)
    if any(True for _ in module.parameters(recurse=False)):
        return (f"{type(module).__name__} is not a layer this tool can slim (no layer rule: see "
                f"maskednas.register_layer_rule)")
    return None


@contextlib.contextmanager
def dependency_graph(model: nn.Module, example: torch.Tensor):
    """Torch-Pruning's dependency graph of `model`, its splits and concatenations mapped from
    what the forward did (`graph_mapping`) while the context lasts: Torch-Pruning redoes its
    index mappings in every `get_pruning_group`, so finding the groups and pruning them both
    happen inside it."""
    import torch_pruning as tp
    pruner = attention_pruner()
    # by type: Torch-Pruning's tracing takes customized layer types only
    opaque = {type(m): pruner for m in opaque_attentions(model)}
    with mapped_by_the_forward() as recorded:
        with recorded:  # the forward of the build: the sizes of every torch.cat
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example,
                                                          customized_pruners=opaque or None)
        yield graph


def discover(model: nn.Module, example: torch.Tensor, heads: list[nn.Module],
             ignored: list[nn.Module] = ()) -> ChannelGroups:
    """The channel groups of `model` (traced on `example`): every group but the `heads`' outputs
    (the classes) and those that touch an `ignored` layer (the user's `model.ignore`)."""
    names = {m: n for n, m in model.named_modules()}
    param_names = {p: n for n, p in model.named_parameters()}
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        warnings.simplefilter("ignore")  # Torch-Pruning's note on layer-scale parameters
        try:
            dg = stack.enter_context(dependency_graph(model, example))
            groups = list(_all_groups(dg, [*heads, *ignored]))
        except SplitMappingError as e:
            raise ChannelGraphError(str(e)) from e
        except Exception as e:  # its index mapping fails on some ops: name the op, not the crash
            raise ChannelGraphError(_graph_failure(e)) from e
        out = _channel_spaces(model, dg, groups, names, param_names, ignored)
    _link_grouped_convs(model, out)
    return out


@dataclass
class _Found:
    """One Torch-Pruning group, as its full pruning group lists it."""
    root: str
    handler: object
    channels: list[int]  # the root layer's output channels in it
    entries: list  # (side, layer or parameter name, positions, root channels)
    ties: list  # (tying op, positions at its input, root channels)
    why: str | None
    full: object
    classes: list = field(default_factory=list)  # each root channel's tied set
    loops: list = field(default_factory=list)  # pairs of root channels that reach each other

    @property
    def size(self) -> int:
        return len(self.channels)


def _channel_spaces(model: nn.Module, dg, groups, names: dict, param_names: dict,
                    ignored) -> ChannelGroups:
    """Each group's channels in every layer it reaches, or why it is left whole. Groups whose
    channels a chunk or a channel shuffle ties together are merged, one channel per tied set."""
    import torch_pruning as tp
    found, opaque = [], opaque_attentions(model)
    for full, channels in groups:
        root = full[0].dep
        root_name, size = names[root.target.module], len(channels)
        rank = {c: k for k, c in enumerate(channels)}
        entries, ties, why = [], {}, None
        for item in full.items:
            target = item.dep.target.module
            idxs, roots = [int(i) for i in item.idxs], [rank[int(r)] for r in item.root_idxs]
            if isinstance(target, nn.Parameter):
                entries.append(("param", param_names[target], idxs, roots))
            elif isinstance(target, nn.Module) and target in opaque:
                # an opaque attention: its input projections read the group, its output one writes it
                inputs, output = projections(target, opaque[target])
                side = "output" if "out" in item.dep.handler.__name__ else "input"
                for layer in ([output] if side == "output" else inputs):
                    entries.append((side, f"{names[target]}.{layer}", idxs, roots))
            elif isinstance(target, nn.Module) and target in names:
                why = why or _why_unsupported(target)
                side = "output" if "out" in item.dep.handler.__name__ else "input"
                entries.append((side, names[target], idxs, roots))
            elif getattr(target, "tie_period", None):
                ties.setdefault(target, set()).update(zip(idxs, roots))
            elif target in dg.module2node and multiplies_activations(dg.module2node[target].grad_fn):
                # Torch-Pruning maps a product as if elementwise: attention's heads are not
                why = why or (f"the channels of {root_name} go through a product of two "
                              f"activations (attention), which pruning here cannot follow")
            elif isinstance(target, tp.ops._SplitOp) and getattr(target, "unequal_chunk", None):
                why = why or (f"the channels of {root_name} go through a chunk into unequal parts "
                              f"({target.unequal_chunk}), which pruning would move between them")
            elif isinstance(target, tp.ops._SplitOp):
                # a part's size is in the network's code (`x.split(64)`): pruning cannot change it
                why = why or (f"the channels of {root_name} go through a split (torch.split) whose "
                              f"part sizes are in the network's code, which pruning cannot change")
        if not any(side == "input" for side, *_ in entries):
            # no layer reads them: Torch-Pruning lost the channels at an op it cannot map (a
            # product of two activations: attention's q @ k), so what reads them is unknown
            why = why or (f"no layer this tool follows reads the channels of {root_name} (they go "
                          f"through an op Torch-Pruning's graph cannot map, such as a product of "
                          f"two activations)")
        touched = [names[d.target.module] for d, _ in full if any(d.target.module is m for m in ignored)]
        if touched:
            why = f"shares channels with {touched[0]}, listed in model.ignore"
        partial = any(_why_partial(name, root_name, roots, size) for _, name, _, roots in entries)
        loops = _loops(dg, root, channels) if partial and not why else []
        found.append(_Found(root_name, root.handler, channels, entries, list(ties.items()), why,
                            full, loops=loops))
    out = ChannelGroups({}, {}, {}, {}, {}, {})
    for component, loose in _tied_components(found):
        _add_group(model, out, [found[i] for i in component], loose)
    for side, spaces in (("input", out.inputs), ("output", out.outputs), ("param", out.params)):
        for name, space in spaces.items():
            taken = torch.cat([s.index for s in space.slices])
            if len(torch.unique(taken)) < len(taken):
                raise _misread(f"maps two groups to the same positions of the {side} of {name}")
    return out


def _loops(dg, root, channels: list[int]) -> list[tuple[int, int]]:
    """Pairs of the root's channels (as ranks in `channels`) that reach each other: a depthwise
    conv on one piece of a concatenation that the root reads whole (GhostNet's cheap operation,
    whose output channel j is its input channel j) makes channels j and j + n one. Torch-Pruning
    merges a group's positions keeping one root channel each, so the loop shows only in the
    group of a single channel: probed from the first, middle and last, then from all where one
    shows (a group it misses is left whole: a layer reads part of it)."""
    rank = {c: k for k, c in enumerate(channels)}
    module, handler = root.target.module, root.handler

    def reached(k: int) -> list[tuple[int, int]]:
        group = dg.get_pruning_group(module, handler, [channels[k]])
        return [(k, rank[int(i)]) for item in group.items
                if item.dep.target.module is module and item.dep.handler == handler
                for i in item.idxs if int(i) in rank and rank[int(i)] != k]

    if not any(reached(k) for k in {0, len(channels) // 2, len(channels) - 1}):
        return []
    return [pair for k in range(len(channels)) for pair in reached(k)]


def _ranks(f: _Found, own: list[list[int]]) -> torch.Tensor:
    """`own`'s root channels as positions among the group's."""
    rank = {c: k for k, c in enumerate(f.channels)}
    return torch.tensor([[rank[c] for c in cs] for cs in own])


def _all_groups(dg, ignored: list):
    """Torch-Pruning's groups, rooted at each conv and linear layer's output channels: unlike
    its `get_all_groups`, which skips a layer once any group reached it, a layer reached at some
    of its channels (by a chunk, a shuffle, a slice) roots a group of the others. Yields (group,
    the root's channels in it); a group that reaches an ignored layer is not yielded."""
    ignored = [*ignored, *dg.IGNORED_LAYERS_IN_TRACING]
    covered: dict = {}  # layer -> its output channels some group holds
    for m in list(dg.module2node):
        pruner = dg.get_pruner_of_module(m)
        if (m in ignored or not isinstance(m, (nn.Conv2d, nn.Linear)) or pruner is None
                or pruner.get_out_channels(m) is None):
            continue
        rest = [c for c in range(pruner.get_out_channels(m)) if c not in covered.get(m, ())]
        if not rest:
            continue
        group = dg.get_pruning_group(m, pruner.prune_out_channels, rest)
        prunable = True
        for dep, idxs in group:
            if dg.is_out_channel_pruning_fn(dep.handler):
                covered.setdefault(dep.target.module, set()).update(int(i) for i in idxs)
                prunable = prunable and dep.target.module not in ignored
        if prunable:
            yield group, rest


def _tied_components(found: list[_Found]):
    """The groups joined by ties, each with the tied sets of its (group, root channel) pairs:
    yields (group indices, whether a channel is tied to one no group holds) per component, and
    sets each group's `classes`."""
    parent: dict = {}  # union-find over (group, root channel) pairs and over groups

    def find(x):
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    def union(a, b):
        for a, b in ((a, b), (a[0], b[0])):  # the pairs, and their groups
            a, b = find(a), find(b)
            if a != b:
                parent[max(a, b)] = min(a, b)  # the first group's channel names the set

    at: dict = {}  # tying op -> position at its input -> (group, root channel)
    for g, f in enumerate(found):
        for op, pairs in f.ties:
            for q, r in pairs:
                at.setdefault(op, {})[q] = (g, r)
    loose = set()
    for g, f in enumerate(found):
        for a, b in f.loops:
            union((g, a), (g, b))
    for op, positions in at.items():
        period, size = op.tie_period, op.tie_size
        for j in range(period):
            tied = [positions.get(j + k * period) for k in range(size // period)]
            present = [t for t in tied if t is not None]
            if len(present) < len(tied):
                loose |= {g for g, _ in present}
            for a, b in zip(present, present[1:]):
                union(a, b)
    components: dict[int, list[int]] = {}
    for g, f in enumerate(found):
        components.setdefault(find(g), []).append(g)
        f.classes = [find((g, r)) for r in range(f.size)]
    for members in components.values():
        yield members, any(g in loose for g in members)


def _add_group(model: nn.Module, out: ChannelGroups, members: list[_Found], loose: bool) -> None:
    """One pruned group from tied Torch-Pruning groups (most often just one): a channel per tied
    set, read by every layer at the positions of the set's channels; or the reason it is left
    whole, recorded for each root."""
    first = members[0]
    order: dict = {}  # tied set -> its channel in the group
    for f in members:
        for c in f.classes:
            order.setdefault(c, len(order))
    size = len(order)
    why = next((f.why for f in members if f.why), None)
    if loose:
        why = why or (f"the channels of {first.root} are tied (by a chunk or a channel shuffle) to "
                      f"channels no pruned group holds")
    own = []  # per member: its root channels in each of the group's channels
    for f in members:
        per = [[] for _ in range(size)]
        for r, c in enumerate(f.classes):
            per[order[c]].append(f.channels[r])
        if len({len(p) for p in per}) != 1 or not per[0]:
            why = why or (f"a chunk or a channel shuffle ties the channels of {first.root} and "
                          f"{f.root} unevenly")
        own.append(per)
    spaces: dict = {}  # (side, name) -> group channel -> positions
    for f in members:
        for side, name, idxs, roots in f.entries:
            at = spaces.setdefault((side, name), {})
            for i, r in zip(idxs, roots):
                at.setdefault(order[f.classes[r]], []).append(i)
    for (side, name), at in spaces.items():
        why = why or _why_partial(name, first.root, [c for c, pos in at.items() for _ in pos], size)
    if size == 1 and first.size > 1:
        why = why or (f"chunks or channel shuffles tie all {sum(f.size for f in members)} channels "
                      f"of {len(members)} groups into one set: nothing to prune")
    if why:  # one entry per component, as a pruned one is one group
        others = [f.root for f in members[1:]]
        out.skipped[first.root] = why + (f" (with the groups of {', '.join(others)}, tied to it)"
                                         if others else "")
        return
    key = group_key(first.root)
    out.sizes[key], out.roots[key] = size, (first.root, first.handler)
    if any(f.ties or f.loops for f in members):
        out.tied.add(key)
    if len(members) > 1 or size != first.size or first.channels != list(range(size)):
        out.own[key] = torch.tensor(own[0])
        out.linked[key] = [(f.root, f.handler, torch.tensor(o)) for f, o in zip(members[1:], own[1:])]
    scores = [_magnitude(f.full, f.size) for f in members]
    out.importance[key] = (None if any(s is None for s in scores) else
                           torch.stack([s[_ranks(f, o)].mean(1) for s, f, o in zip(scores, members, own)]).mean(0))
    out.members[key] = set()
    for (side, name), at in spaces.items():
        store = {"param": out.params, "input": out.inputs, "output": out.outputs}[side]
        if name not in store:
            store[name] = ChannelSpace(_space_size(model, name, side))
        positions = [sorted(at[c]) for c in range(size)]
        index = torch.tensor([i for pos in positions for i in pos])
        if int(index.max()) >= store[name].size:
            raise _misread(f"maps channel {int(index.max())} of {first.root}'s group into the {side} "
                           f"of {name}, which has {store[name].size} channels")
        if len(set(index.tolist())) < len(index):
            raise _misread(f"maps two channels of {first.root}'s group to one position of the "
                           f"{side} of {name}")
        store[name].slices.append(Slice(key, index, len(index) // size))
        out.members[key].add(name)


def _magnitude(group, size: int) -> torch.Tensor | None:
    import torch_pruning as tp
    try:
        scores = tp.importance.GroupMagnitudeImportance(p=2)(group)
    except Exception:  # noqa: BLE001 -- an op its importance has no rule for; asked for, it is refused
        return None
    if scores is None or len(scores) != size:
        return None
    return torch.nan_to_num(scores.detach().float().cpu(), nan=1.0)  # an all-zero group: no order


def _misread(what: str) -> "ChannelGraphError":
    return ChannelGraphError(f"Torch-Pruning's dependency graph {what}: it misreads an op before "
                             f"that layer, so this network cannot be pruned here")


class ChannelGraphError(ValueError):
    pass


# Torch-Pruning's index mappings, by function, and the op each maps the channels through
_MAPPED_OPS = {
    "update_reshape_index_mapping": "a reshape that splits or merges the channel dimension (a "
                                    "channel shuffle, a space-to-depth, heads split from channels)",
    "update_concat_index_mapping": "a concatenation",
    "update_split_index_mapping": "a split or chunk of the channels",
    "update_slice_index_mapping": "a slice of the channels",
    "update_flatten_index_mapping": "a flatten",
    "update_unbind_index_mapping": "an unbind",
    "update_expand_index_mapping": "an expand",
}


def _graph_failure(e: Exception) -> str:
    """One line: which op Torch-Pruning's dependency graph failed on, and what that means."""
    import traceback
    frames = [f.name for f in traceback.extract_tb(e.__traceback__)]
    op = next((_MAPPED_OPS[f] for f in reversed(frames) if f in _MAPPED_OPS), None)
    where = f"maps channels through {op}" if op else f"fails in {frames[-1] if frames else '?'}"
    return (f"Torch-Pruning's dependency graph, which finds the channel groups, fails where the "
            f"network {where} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"its channels cannot be followed, so this network cannot be pruned here")


def _why_partial(name: str, root: str, roots: list[int], size: int) -> str | None:
    """Why a layer that reads the group's channels other than each equally often cannot be
    pruned with it (None: it reads every channel at the same number of positions)."""
    counts = collections.Counter(roots)
    if len(counts) < size:
        return (f"{name} reads {len(counts)} of the {size} channels of {root} (a channel split or "
                f"slice: its bounds are in the network's code, which pruning cannot change)")
    if len(set(counts.values())) > 1:
        return f"{name} reads the channels of {root} at different numbers of positions"
    return None


def _link_grouped_convs(model: nn.Module, out: ChannelGroups) -> None:
    """A grouped convolution is pruned by whole groups, each with its input and output channels:
    its output channel group is merged into its input channel group, channel by channel at the
    same position of the convolution, so that one mask decides both sides."""
    for name, m in model.named_modules():
        rule = rule_for(m)
        if not (isinstance(m, nn.Conv2d) and rule is not None and rule.whole_partitions):
            continue
        ins, outs = out.inputs.get(name), out.outputs.get(name)
        whole = lambda space, size: (space is not None and len(space.slices) == 1 and
                                     space.slices[0].repeat == 1 and len(space.slices[0].index) == size)
        if not (whole(ins, m.in_channels) and whole(outs, m.out_channels)):
            for space in (ins, outs):
                for group in {s.group for s in (space.slices if space else [])}:
                    leave_whole(out, group, f"{name} is a grouped convolution whose inputs or outputs "
                                             f"are not one whole channel group")
            continue
        (into, a_index), (merged, b_index) = [(s.group, s.index) for s in (ins.slices[0], outs.slices[0])]
        out.grouped_convs.append(name)
        if into == merged:
            continue
        at_position = torch.empty_like(b_index)
        at_position[b_index] = torch.arange(len(b_index))
        match = at_position[a_index]  # the output group's channel beside each input channel
        for space in [*out.inputs.values(), *out.outputs.values(), *out.params.values()]:
            for s in space.slices:
                if s.group == merged:
                    s.group, s.index = into, s.index.view(-1, s.repeat)[match].flatten()
        base = out.own.pop(merged, None)
        out.linked.setdefault(into, []).append((*out.roots[merged], match if base is None else base[match]))
        for root, handler, inner in out.linked.pop(merged, []):
            out.linked[into].append((root, handler, inner[match]))
        out.members[into] |= out.members.pop(merged)
        del out.sizes[merged], out.roots[merged]
    # a group left whole after its convolution was linked takes the convolution with it
    out.grouped_convs = [n for n in out.grouped_convs if out.outputs[n].slices and out.inputs[n].slices]


def leave_whole(out: ChannelGroups, group: str, why: str) -> None:
    """Drop `group` from the pruned ones: its layers keep all its channels."""
    if group not in out.sizes:
        return
    out.skipped[out.roots[group][0]] = why
    for space in [*out.inputs.values(), *out.outputs.values(), *out.params.values()]:
        space.slices = [s for s in space.slices if s.group != group]
    out.tied.discard(group)
    for key in ("sizes", "roots", "members", "linked", "own"):
        getattr(out, key).pop(group, None)


def _space_size(model: nn.Module, name: str, side: str) -> int:
    if side == "param":  # Torch-Pruning prunes a loose parameter's last non-singleton dim
        return [d for d in model.get_parameter(name).shape if d > 1][-1]
    m = model.get_submodule(name)
    rule = rule_for(m)
    if rule is None:
        raise TypeError(f"{name}: {type(m).__name__} has no layer rule")
    return rule.channels(m, side)
