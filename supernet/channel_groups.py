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
from maskednas.supernet.graph_mapping import SplitMappingError, mapped_by_the_forward


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


def group_key(name: str) -> str:
    """A ModuleDict key for a layer name (keys may not contain '.')."""
    return name.replace(".", "/")


def _width_of(dg, module, handler) -> int:
    return dg.get_out_channels(module) if "out" in handler.__name__ else dg.get_in_channels(module)


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
    with mapped_by_the_forward() as recorded:
        with recorded:  # the forward of the build: the sizes of every torch.cat
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
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
            groups = list(dg.get_all_groups(ignored_layers=[*heads, *ignored],
                                            root_module_types=(nn.Conv2d, nn.Linear)))
        except SplitMappingError as e:
            raise ChannelGraphError(str(e)) from e
        except Exception as e:  # its index mapping fails on some ops: name the op, not the crash
            raise ChannelGraphError(_graph_failure(e)) from e
        out = _channel_spaces(model, dg, groups, names, param_names, ignored)
    _link_grouped_convs(model, out)
    return out


def _channel_spaces(model: nn.Module, dg, groups, names: dict, param_names: dict,
                    ignored) -> ChannelGroups:
    """Each group's channels in every layer it reaches, or why it is left whole."""
    import torch_pruning as tp
    out = ChannelGroups({}, {}, {}, {}, {}, {})
    for group in groups:
        root = group[0].dep
        root_name, size = names[root.target.module], _width_of(dg, root.target.module, root.handler)
        full = dg.get_pruning_group(root.target.module, root.handler, list(range(size)))
        entries, why = [], None
        for item in full.items:
            target = item.dep.target.module
            idxs, roots = [int(i) for i in item.idxs], [int(r) for r in item.root_idxs]
            if isinstance(target, nn.Parameter):
                entries.append(("param", param_names[target], idxs, roots))
            elif isinstance(target, nn.Module) and target in names:
                why = why or _why_unsupported(target)
                side = "output" if "out" in item.dep.handler.__name__ else "input"
                entries.append((side, names[target], idxs, roots))
        touched = [names[d.target.module] for d, _ in full if any(d.target.module is m for m in ignored)]
        if touched:
            why = f"shares channels with {touched[0]}, listed in model.ignore"
        for _, name, _, roots in entries:
            why = why or _why_partial(name, root_name, roots, size)
        if any(isinstance(item.dep.target.module, tp.ops._SplitOp) for item in full.items):
            # a part's size is in the network's code (`x.split(64)`), or pruning would have to
            # keep the parts equal (`x.chunk(2)`): the autograd graph cannot tell which
            why = why or (f"the channels of {root_name} go through a split (torch.split, chunk) "
                          f"whose part sizes are in the network's code, which pruning cannot change")
        if why:
            out.skipped[root_name] = why
            continue
        key = group_key(root_name)
        out.sizes[key], out.roots[key] = size, (root_name, root.handler)
        out.importance[key] = _magnitude(full, size)
        out.members[key] = set()
        for side, name, idxs, roots in entries:
            spaces = {"param": out.params, "input": out.inputs, "output": out.outputs}[side]
            if name not in spaces:
                spaces[name] = ChannelSpace(_space_size(model, name, side))
            if max(idxs) >= spaces[name].size:
                raise _misread(f"maps channel {max(idxs)} of {root_name}'s group into the {side} of "
                               f"{name}, which has {spaces[name].size} channels")
            if len(set(idxs)) < len(idxs):
                raise _misread(f"maps two channels of {root_name}'s group to one position of the "
                               f"{side} of {name}")
            order = sorted(range(len(idxs)), key=lambda k: (roots[k], idxs[k]))  # by group channel
            spaces[name].slices.append(Slice(key, torch.tensor([idxs[k] for k in order]), len(idxs) // size))
            out.members[key].add(name)
    for side, spaces in (("input", out.inputs), ("output", out.outputs), ("param", out.params)):
        for name, space in spaces.items():
            taken = torch.cat([s.index for s in space.slices])
            if len(torch.unique(taken)) < len(taken):
                raise _misread(f"maps two groups to the same positions of the {side} of {name}")
    return out


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
        out.linked.setdefault(into, []).append((*out.roots[merged], match))
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
    for key in ("sizes", "roots", "members", "linked"):
        getattr(out, key).pop(group, None)


def _space_size(model: nn.Module, name: str, side: str) -> int:
    if side == "param":  # Torch-Pruning prunes a loose parameter's last non-singleton dim
        return [d for d in model.get_parameter(name).shape if d > 1][-1]
    m = model.get_submodule(name)
    rule = rule_for(m)
    if rule is None:
        raise TypeError(f"{name}: {type(m).__name__} has no layer rule")
    return rule.channels(m, side)
