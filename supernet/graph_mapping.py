"""Torch-Pruning's channel mapping through splits and concatenations, from what the forward did.

Torch-Pruning (1.6) gives the i-th consumer *found while tracing* the i-th part of a split, so
a network that uses its parts out of order (a cross-stage partial block: `xs, xb = x.split(..)`,
`xb` run through blocks first, `xs` concatenated last) gets its channels swapped between the
parts, and a part read by two consumers shifts every later one. The part a consumer reads is in
the autograd graph (the `output_nr` of its edge to the split); here the mapping uses that, and
the sizes of the parts as the split made them (the last part of an even split may be smaller).
It infers a concatenation's piece sizes by walking the graph, which fails (None) on a piece
that is a slice (DPN's dual paths); here they are the sizes `torch.cat` was called with.

Two ops move channels in a way pruning can follow only with a constraint, which `channel_groups`
adds as ties between channels (`tie_period`): `x.chunk(n)` (its parts are equal whatever the
width: pruning keeps them equal by keeping channel q of every part alike) and a channel shuffle
(`view(N, g, C/g, H, W)`, `transpose(1, 2)`, `view(N, C, H, W)`: channel j of every one of the g
pieces alike). Torch-Pruning maps neither (a shuffle divides by zero in its reshape mapping);
here the shuffle's permutation is mapped exactly. A `split` with sizes in the network's code is
left as it is: pruning cannot change those sizes.
"""
from __future__ import annotations

import contextlib
import re

import torch
from torch.overrides import TorchFunctionMode

_CATS = {torch.cat, torch.concat, torch.concatenate}
_CHUNKS = {torch.chunk, torch.Tensor.chunk}
_VIEWS = ("ViewBackward", "ReshapeAliasBackward", "UnsafeViewBackward")


class SplitMappingError(ValueError):
    pass


class _RecordConcatenations(TorchFunctionMode):
    """The channel count of each piece of every concatenation along dim 1 and its result's
    shape, by its grad_fn, and the grad_fn of every `chunk` of the channels (its parts follow the
    width)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict = {}
        self.chunks: set = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if func in _CHUNKS and result and result[0].grad_fn is not None:
            dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
            if dim % args[0].ndim == 1:
                self.chunks.add(result[0].grad_fn)
        if func in _CATS and isinstance(result, torch.Tensor) and result.grad_fn is not None:
            tensors = args[0] if args else kwargs["tensors"]
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            # dim 1 is the channels of NC, NCHW and NCDHW tensors; of (N, tokens, C) it is the
            # tokens (a class token prepended), which are no concatenation of channels
            if dim % result.ndim == 1 and result.ndim != 3 and all(t.requires_grad for t in tensors):
                self.sizes[result.grad_fn] = ([int(t.shape[1]) for t in tensors], tuple(result.shape))
        return result


def _part_sizes(grad_fn) -> list[int] | None:
    """The channel count of each part, None when the split is not over dim 1 (the channels)."""
    sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
    dim = getattr(grad_fn, "_saved_dim", None)
    if sizes is None or dim is None or dim % len(sizes) != 1:
        return None
    total = int(sizes[1])
    if hasattr(grad_fn, "_saved_split_sizes"):
        return [int(s) for s in grad_fn._saved_split_sizes]
    step = int(grad_fn._saved_split_size)
    return [min(step, total - start) for start in range(0, total, step)]


def shuffle_of(view) -> tuple[int, object] | None:
    """(g, the grad_fn of the view that starts it) where `view`, a reshape's grad_fn, ends a
    channel shuffle: (N, C, H, W) viewed as (N, g, C/g, H, W), its dims 1 and 2 swapped, viewed
    back as (N, C, H, W). None for any other reshape."""
    sizes = getattr(view, "_saved_self_sym_sizes", None)
    if sizes is None or len(sizes) != 5 or not type(view).__name__.startswith(_VIEWS):
        return None
    node, swapped = view.next_functions[0][0], False
    while node is not None:
        kind = type(node).__name__
        if kind.startswith(_VIEWS):
            before = getattr(node, "_saved_self_sym_sizes", None)
            shuffles = (swapped and before is not None and len(before) == 4 and
                        before[1] == sizes[1] * sizes[2] and tuple(before[2:]) == tuple(sizes[3:]))
            return (int(sizes[2]), node) if shuffles else None
        if kind.startswith(("TransposeBackward", "PermuteBackward")) and not swapped:
            dims = ((node._saved_dim0 % 5, node._saved_dim1 % 5) if kind.startswith("Transpose")
                    else tuple(d % 5 for d in node._saved_dims))
            if dims not in ((1, 2), (2, 1), (0, 2, 1, 3, 4)):
                return None
            swapped = True
        elif not kind.startswith("CloneBackward"):  # `.contiguous()`
            return None
        node = node.next_functions[0][0]
    return None


class _ShuffleIndexMapping:
    """Channel q = i * (C / g) + j before a shuffle is channel j * g + i after it."""

    def __init__(self, groups: int, channels: int, reverse: bool) -> None:
        self.groups, self.per, self.reverse = groups, channels // groups, reverse

    def __call__(self, idxs):
        from torch_pruning._helpers import _HybridIndex
        g, per = self.groups, self.per
        move = ((lambda p: (p % g) * per + p // g) if self.reverse else
                (lambda q: (q % per) * g + q // per))
        return [_HybridIndex(idx=move(i.idx), root_idx=i.root_idx) for i in idxs]


def _map_shuffle(node) -> None:
    """The permutation between the view that ends a shuffle and the tensor it merges."""
    groups, channels = node.module.shuffle
    for source in node.inputs:
        for dep in node.dependencies:
            if dep.target is source:
                dep.index_mapping[0] = _ShuffleIndexMapping(groups, channels, reverse=True)
        for dep in source.dependencies:
            if dep.target is node:
                dep.index_mapping[0] = _ShuffleIndexMapping(groups, channels, reverse=False)


_PRODUCTS = re.compile(r"(ScaledDotProduct\w*|Bmm|Mm|Matmul|Baddbmm)Backward\d+")
_PASS_THROUGH = re.compile(r"(T|Transpose|Permute|View|Reshape|UnsafeView|Expand|Clone)Backward\d+")


def multiplies_activations(grad_fn) -> bool:
    """Whether an autograd node is a matrix product of two activations (attention's q @ k and
    attention @ v, fused or not), not of an activation and a weight (a linear layer's)."""
    kind = type(grad_fn).__name__
    if not _PRODUCTS.fullmatch(kind):
        return False
    if kind.startswith("ScaledDotProduct"):
        return True
    operands = [f for f, _ in grad_fn.next_functions if f is not None]
    return len(operands) >= 2 and not any(_from_a_parameter(f) for f in operands)


def _from_a_parameter(node) -> bool:
    while node is not None and _PASS_THROUGH.fullmatch(type(node).__name__):
        node = node.next_functions[0][0] if node.next_functions else None
    return node is not None and type(node).__name__ == "AccumulateGrad"


def _map_concat(node) -> None:
    """Each piece's offset in a concatenation of the recorded sizes. Torch-Pruning's own mapping
    gives up where the channel count it infers downstream differs from their sum, as where a
    chunk or a shuffle lies between (ShuffleNet's blocks), and maps every piece to offset 0."""
    from torch_pruning.dependency.index_mapping import _ConcatIndexMapping

    sizes = node.module.concat_sizes
    offsets = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
    node.module.offsets = offsets
    for i, piece in enumerate(node.inputs):
        for dep in node.dependencies:
            if dep.target is piece:
                dep.index_mapping[1] = _ConcatIndexMapping(offset=offsets[i: i + 2], reverse=True)
                break
        for dep in piece.dependencies:
            if dep.target is node:
                dep.index_mapping[1] = _ConcatIndexMapping(offset=offsets[i: i + 2], reverse=False)
                break


def _over_channels(graph, node, sizes: list[int], shape: tuple[int, ...]) -> bool:
    """Whether a concatenation along dim 1 is one of channels: not where Torch-Pruning infers
    every piece's channels as the result's last dimension instead, and not as the piece's dim 1
    (channels-last tensors, whose dim 1 is their height). Where it infers none for a piece, or
    more than its dim 1 (a slice: DPN), dim 1 is taken."""
    from torch_pruning.dependency import shape_infer
    inferred = [shape_infer.infer_channels_between(graph, piece, node) for piece in node.inputs]
    channels_last = (all(c is not None and c == shape[-1] for c in inferred)
                     and any(c != size for c, size in zip(inferred, sizes)))
    return not channels_last


def _split_after_concat(graph) -> None:
    """Torch-Pruning applies a dependency's split mapping before its concatenation mapping; on
    the edge from a concatenation back to a split part it reads (a chunk's part concatenated),
    the concatenation's (which piece, at which offset) must come first."""
    from torch_pruning.dependency.index_mapping import _ConcatIndexMapping, _SplitIndexMapping
    for node in graph.module2node.values():
        for dep in node.dependencies:
            first, second = dep.index_mapping
            if (isinstance(first, _SplitIndexMapping) and first.reverse
                    and isinstance(second, _ConcatIndexMapping) and second.reverse):
                dep.index_mapping = [second, first]


def _part_of(consumer, split_node) -> int:
    parts = {nr for f, nr in getattr(consumer.grad_fn, "next_functions", ()) if f is split_node.grad_fn}
    name = consumer.name or consumer.module
    if not parts:  # its recorded call is another than the one reading the split
        raise SplitMappingError(f"{name} reads a part of a channel split in one of several calls "
                                f"(a module shared between places); which part cannot be told")
    if len(parts) > 1:
        raise SplitMappingError(f"{name} reads {len(parts)} parts of one channel split at once; "
                                f"the channels of each part cannot be told apart")
    return parts.pop()


def _map_split(split_node) -> None:
    """The index mapping between a split and each consumer, by the part the consumer reads."""
    from torch_pruning.dependency.index_mapping import _SplitIndexMapping

    for consumer, part in zip(split_node.outputs, split_node.module.parts):
        bounds = split_node.module.offsets[part: part + 2]
        for dep in split_node.dependencies:
            if dep.target is consumer:
                dep.index_mapping[0] = _SplitIndexMapping(offset=bounds, reverse=False)
        for dep in consumer.dependencies:
            if dep.target is split_node:
                dep.index_mapping[0] = _SplitIndexMapping(offset=bounds, reverse=True)


@contextlib.contextmanager
def mapped_by_the_forward():
    """While it lasts, Torch-Pruning's index mappings (which its graph builder sets and each
    `get_pruning_group` redoes) find each split's parts by the part each consumer reads (its
    `split_sizes`, which its shape inference reads per consumer, and its index mappings) and
    take each concatenation's piece sizes from the call. Yields the recorder of those calls,
    to be active around the graph build."""
    from torch_pruning import ops
    from torch_pruning.dependency import index_mapping, shape_infer

    original_update, original_split = index_mapping.update_index_mapping, index_mapping.update_split_index_mapping
    original_reshape = index_mapping.update_reshape_index_mapping
    original_concat = index_mapping.update_concat_index_mapping
    recorded = _RecordConcatenations()

    def update(graph):
        starts = {}  # the grad_fn of a view that starts a shuffle -> its node
        for node in graph.module2node.values():
            if node.type == ops.OPTYPE.RESHAPE and not hasattr(node.module, "shuffle"):
                found = shuffle_of(node.grad_fn)
                node.module.shuffle = None
                if found is not None:
                    groups, start = found
                    sizes = node.grad_fn._saved_self_sym_sizes
                    node.module.shuffle = (groups, int(sizes[1] * sizes[2]))
                    starts[start] = node.module.shuffle
        for node in graph.module2node.values():  # ties sit on the view that starts a shuffle
            if node.type == ops.OPTYPE.RESHAPE and node.grad_fn in starts:
                groups, channels = starts[node.grad_fn]
                node.module.shuffle_start = True
                node.module.tie_period, node.module.tie_size = channels // groups, channels
        for node in graph.module2node.values():
            # Torch-Pruning's own split and concatenation ops, set when the graph is built (its
            # pruning updates their sizes since)
            ours = node.type in (ops.OPTYPE.CONCAT, ops.OPTYPE.SPLIT)
            if not ours or getattr(node.module, "from_the_forward", False):
                continue
            node.module.from_the_forward = True
            if node.type == ops.OPTYPE.CONCAT and len(recorded.sizes.get(node.grad_fn, ((),))[0]) == len(node.inputs):
                # the pieces in call order: one graph input per piece, as the call had them, and
                # over the channels wherever Torch-Pruning can tell a piece's (a channels-last
                # tensor's dim 1 is its height)
                sizes, shape = recorded.sizes[node.grad_fn]
                if ([f for f, _ in node.grad_fn.next_functions] == [n.grad_fn for n in node.inputs]
                        and _over_channels(graph, node, sizes, shape)):
                    node.module.concat_sizes = sizes
                    node.module.sizes_from_the_call = True
            sizes = _part_sizes(node.grad_fn) if node.type == ops.OPTYPE.SPLIT else None
            if sizes is None:
                continue
            if node.grad_fn in recorded.chunks and len(set(sizes)) == 1:  # equal parts
                node.module.tie_period, node.module.tie_size = sizes[0], sum(sizes)
            elif node.grad_fn in recorded.chunks:  # the last part smaller: pruned, it would move
                node.module.unequal_chunk = sizes
            node.module.offsets = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
            node.module.parts = [_part_of(c, node) for c in node.outputs]
            node.module.split_sizes = [sizes[part] for part in node.module.parts]  # per consumer
        original_update(graph)
        _split_after_concat(graph)

    def update_reshape(graph, node):
        if getattr(node.module, "shuffle", None) is not None:
            _map_shuffle(node)
        elif not getattr(node.module, "shuffle_start", False):  # the start maps one to one
            original_reshape(graph, node)

    index_mapping.update_index_mapping = update
    index_mapping.update_split_index_mapping = lambda graph, node: (
        _map_split(node) if getattr(node.module, "parts", None) is not None else None)
    index_mapping.update_reshape_index_mapping = update_reshape
    def update_concat(graph, node):
        if getattr(node.module, "sizes_from_the_call", False):
            _map_concat(node)
        elif node.module.concat_sizes is not None or None not in [
                shape_infer.infer_channels_between(graph, n, node) for n in node.inputs]:
            original_concat(graph, node)
        # else: a piece no layer's channels reach (a rotary embedding's position table): unmapped

    index_mapping.update_concat_index_mapping = update_concat
    try:
        yield recorded
    finally:
        index_mapping.update_index_mapping, index_mapping.update_split_index_mapping = original_update, original_split
        index_mapping.update_reshape_index_mapping = original_reshape
        index_mapping.update_concat_index_mapping = original_concat
