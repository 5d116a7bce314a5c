"""Torch-Pruning's channel mapping through splits and concatenations, from what the forward did.

Torch-Pruning (1.6) gives the i-th consumer *found while tracing* the i-th part of a split, so
a network that uses its parts out of order (a cross-stage partial block: `xs, xb = x.split(..)`,
`xb` run through blocks first, `xs` concatenated last) gets its channels swapped between the
parts, and a part read by two consumers shifts every later one. The part a consumer reads is in
the autograd graph (the `output_nr` of its edge to the split); here the mapping uses that, and
the sizes of the parts as the split made them (the last part of an even split may be smaller).
It infers a concatenation's piece sizes by walking the graph, which fails (None) on a piece
that is a slice (DPN's dual paths); here they are the sizes `torch.cat` was called with.
"""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

_CATS = {torch.cat, torch.concat, torch.concatenate}


class SplitMappingError(ValueError):
    pass


class _RecordConcatenations(TorchFunctionMode):
    """The channel count of each piece of every concatenation along dim 1, by its grad_fn."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if func in _CATS and isinstance(result, torch.Tensor) and result.grad_fn is not None:
            tensors = args[0] if args else kwargs["tensors"]
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            if dim % result.ndim == 1 and all(t.requires_grad for t in tensors):
                self.sizes[result.grad_fn] = [int(t.shape[1]) for t in tensors]
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
    from torch_pruning.dependency import index_mapping

    original_update, original_split = index_mapping.update_index_mapping, index_mapping.update_split_index_mapping
    recorded = _RecordConcatenations()

    def update(graph):
        for node in graph.module2node.values():
            # Torch-Pruning's own split and concatenation ops, set when the graph is built (its
            # pruning updates their sizes since)
            ours = node.type in (ops.OPTYPE.CONCAT, ops.OPTYPE.SPLIT)
            if not ours or getattr(node.module, "from_the_forward", False):
                continue
            node.module.from_the_forward = True
            if node.type == ops.OPTYPE.CONCAT and len(recorded.sizes.get(node.grad_fn, ())) == len(node.inputs):
                # the pieces in call order: one graph input per piece, as the call had them
                if [f for f, _ in node.grad_fn.next_functions] == [n.grad_fn for n in node.inputs]:
                    node.module.concat_sizes = recorded.sizes[node.grad_fn]
            sizes = _part_sizes(node.grad_fn) if node.type == ops.OPTYPE.SPLIT else None
            if sizes is None:
                continue
            node.module.offsets = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
            node.module.parts = [_part_of(c, node) for c in node.outputs]
            node.module.split_sizes = [sizes[part] for part in node.module.parts]  # per consumer
        original_update(graph)

    index_mapping.update_index_mapping = update
    index_mapping.update_split_index_mapping = lambda graph, node: (
        _map_split(node) if getattr(node.module, "parts", None) is not None else None)
    try:
        yield recorded
    finally:
        index_mapping.update_index_mapping, index_mapping.update_split_index_mapping = original_update, original_split
