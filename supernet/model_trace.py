"""One traced forward pass of a user's network: what its cost and depth choices are made of.

Recorded per layer: its input and output shapes (the feature sizes the cost formulas need);
every adaptive average pooling and upsampling (fvcore counts them; inside SE blocks and before
classifiers pooling is often a functional call no module hook sees) with the layers whose
channels it reads; every `F.normalize` (a functional op that mixes channels when it normalises
over them), in call order; every product of two activations (attention's q @ k and its weights @ v, fused or not), with
its MACs as fvcore counts them; the residual blocks with an identity shortcut: modules whose forward
adds their own input tensor to something and returns a tensor of its shape, found by watching
additions under a `TorchFunctionMode`; and the modules the forward never runs (auxiliary heads,
spare layers), whose parameters the cost leaves out.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from maskednas.supernet.graph_mapping import shuffle_of

_ADDS = {torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__,
         torch.Tensor.__radd__, torch.Tensor.__iadd__}
# products of two tensors fvcore counts (F.linear and products with a parameter are layers)
_PRODUCTS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__,
             torch.bmm, torch.Tensor.bmm, torch.mm, torch.Tensor.mm, F.scaled_dot_product_attention}
_RESHAPES = {torch.reshape, torch.Tensor.reshape, torch.Tensor.view, torch.Tensor.unflatten,
             torch.unflatten}


@dataclass
class Pool:
    """A functional op fvcore counts per channel: adaptive average pooling (one per input
    position) or upsampling (per output position: 1 nearest, 4 bilinear)."""
    producers: tuple[str, ...]  # the layers whose output channels it reads (concatenated)
    size: int  # what fvcore counts per channel
    inside: str  # the innermost module running when it was called


# upsampling modes fvcore counts, and its count per output element
_UPSAMPLE_COUNTS = {"nearest": 1, "bilinear": 4}


@dataclass
class Product:
    """A product of two activations: `macs` at the traced shapes, called inside `inside`."""
    macs: int
    inside: str


def within(name: str, module: str) -> bool:
    """Whether the module or layer `name` is `module` or lies inside it ("": the network)."""
    return module == "" or name == module or name.startswith(module + ".")


def product_macs(func, args) -> int:
    """MACs as fvcore counts them: matmul and bmm as the first operand's size times the
    second's last dimension; scaled_dot_product_attention as its two products (q @ k^T, then
    the weights @ v)."""
    a, b = (args[1], args[0]) if func is torch.Tensor.__rmatmul__ else args[:2]
    if func is F.scaled_dot_product_attention:
        q, k, v = args[:3]
        return math.prod(q.shape[:-1]) * k.shape[-2] * (q.shape[-1] + v.shape[-1])
    return math.prod(a.shape) * b.shape[-1]


@dataclass
class Normalize:
    producer: str  # the layer whose output channels reach it
    dim: int  # the dimension it normalises over
    over_channels: bool  # whether that is the producer's channel dimension


@dataclass
class Trace:
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    pools: list[Pool] = field(default_factory=list)
    normalizations: list[Normalize] = field(default_factory=list)  # F.normalize calls, in order
    products: list[Product] = field(default_factory=list)  # of two activations
    residual_blocks: list[str] = field(default_factory=list)
    output_layers: tuple[str, ...] = ()  # the layers whose outputs are the logits (summed)
    # reshapes that split the channels of an NCHW tensor into several dimensions, or merge
    # several into them (space-to-depth; channel shuffles, which pruning follows, are left out):
    # (module, input shape, output shape, the result's grad_fn)
    channel_reshapes: list[tuple[str, tuple[int, ...], tuple[int, ...], object]] = field(default_factory=list)
    # layers without parameters of their own (a norm without affine weights: Torch-Pruning's
    # groups never reach it) -> the layers whose output channels they read
    weightless: dict[str, tuple[str, ...]] = field(default_factory=dict)
    unused: dict[str, int] = field(default_factory=dict)  # outermost module never run -> its params
    unused_parameters: set[str] = field(default_factory=set)  # the parameters counted there


class _Watch(TorchFunctionMode):
    def __init__(self, trace: Trace, stack: list, produced: dict) -> None:
        super().__init__()
        self.trace, self.stack, self.produced, self.adders = trace, stack, produced, set()
        self.linear = {}  # layer -> whether its channels are its output's last dimension

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ADDS:
            for name, x in self.stack:
                if any(a is x for a in args):
                    self.adders.add(name)
        elif func is F.adaptive_avg_pool2d:
            x = args[0]
            self.trace.pools.append(Pool(_channel_producers(x, self.produced),
                                         x.shape[-2] * x.shape[-1],
                                         self.stack[-1][0] if self.stack else ""))
        elif func in _PRODUCTS and not any(isinstance(a, nn.Parameter) for a in args[:3]):
            self.trace.products.append(Product(product_macs(func, args),
                                               self.stack[-1][0] if self.stack else ""))
        elif func is F.normalize:
            x, dim = args[0], kwargs.get("dim", args[2] if len(args) > 2 else 1)
            producer = _producer(x, self.produced)
            channel_dim = x.ndim - 1 if self.linear[producer] else 1
            channels = self.trace.shapes[producer][1][channel_dim if channel_dim == 1 else -1]
            over = dim % x.ndim == channel_dim and x.shape[dim] == channels
            self.trace.normalizations.append(Normalize(producer, dim, over))
        result = func(*args, **kwargs)
        mode = kwargs.get("mode", args[3] if len(args) > 3 else "nearest")
        if (func is F.interpolate and args[0].ndim == 4 and mode in _UPSAMPLE_COUNTS
                and not kwargs.get("antialias", False)):  # fvcore counts no antialiased one
            self.trace.pools.append(Pool(_channel_producers(args[0], self.produced, "an upsampling"),
                                         result.shape[-2] * result.shape[-1] * _UPSAMPLE_COUNTS[mode],
                                         self.stack[-1][0] if self.stack else ""))
        if func in _RESHAPES and isinstance(result, torch.Tensor) and _reshapes_channels(args[0], result):
            shuffle = shuffle_of(result.grad_fn)
            if shuffle is not None:  # a channel shuffle, which pruning follows: not its start either
                self.trace.channel_reshapes = [r for r in self.trace.channel_reshapes if r[3] is not shuffle[1]]
            else:
                self.trace.channel_reshapes.append((self.stack[-1][0] if self.stack else "",
                                                    tuple(args[0].shape), tuple(result.shape),
                                                    result.grad_fn))
        return result


def _reshapes_channels(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether a feature map `x` (not the input image) of shape (N, C, H, W) becomes `y` with its
    channels split over several dimensions, (N, C1, C2, ..., H, W), or the reverse merge: a
    channel shuffle, a space-to-depth, a manual group norm. Reshapes that keep the channels
    whole (flattens, tokens, windows) pass."""
    if x.grad_fn is None:  # the input image: its channels are never pruned
        return False
    def split(four, more):
        middle = more.shape[1:-2]
        return (four.ndim == 4 and more.ndim >= 5 and more.shape[0] == four.shape[0] and
                more.shape[-2:] == four.shape[-2:] and middle.numel() == four.shape[1] and
                sum(d > 1 for d in middle) >= 2)
    return split(x, y) or split(y, x)


def _producer(x: torch.Tensor, produced: dict) -> str:
    """The nearest layer upstream of `x` in the autograd graph among those recorded."""
    return _producers(x, produced, into_concatenations=False, reader="F.normalize")[0]


def _channel_producers(x: torch.Tensor, produced: dict,
                       reader: str = "an adaptive average pooling") -> tuple[str, ...]:
    """The layers whose output channels make up the channels of `x`: the nearest one upstream,
    or, through a concatenation along the channels (Inception's branches), each piece's."""
    return _producers(x, produced, into_concatenations=True, reader=reader)


def _producers(x: torch.Tensor, produced: dict, into_concatenations: bool,
               reader: str) -> tuple[str, ...]:
    """Breadth first from `x` to the nearest recorded layer; with `into_concatenations`, a
    channel concatenation on the way is walked piece by piece, in order (each piece on its own:
    NASNet's pieces share their inputs; a piece two concatenations hold is walked once)."""
    memo: dict = {}

    def nearest(start) -> tuple[str, ...]:
        if start in memo:
            return memo[start]
        frontier, seen, found = [start], set(), ()
        while frontier:
            node = frontier.pop(0)
            if node is None or node in seen:
                continue
            seen.add(node)
            if node in produced:
                found = (produced[node],)
                break
            if into_concatenations and _concatenates_channels(node):
                found = tuple(p for n, _ in node.next_functions for p in nearest(n))
                break
            frontier.extend(n for n, _ in node.next_functions)
        memo[start] = found
        return found

    found = nearest(x.grad_fn)
    if not found:
        raise ValueError(f"{reader} reads a tensor no conv, linear or norm layer produced")
    return found


def _concatenates_channels(node) -> bool:
    """A `torch.cat` of NCHW tensors along the channels (autograd keeps a negative dim as an
    unsigned 64-bit number)."""
    if not type(node).__name__.startswith("CatBackward"):
        return False
    dim = getattr(node, "_saved_dim", None)
    return dim is not None and (dim - 2**64 if dim >= 2**63 else dim) in (1, -3)


def trace(model: nn.Module, example: torch.Tensor, layers: tuple[type, ...]) -> Trace:
    """Run `model` once on `example` (eval mode, gradients on so that the autograd graph links
    each tensor to the layer that made it)."""
    out, stack, produced, handles, ran = Trace(), [], {}, [], set()
    watch = _Watch(out, stack, produced)

    def before(name):
        def hook(module, args):
            stack.append((name, args[0] if args else None))
        return hook

    def after(name):
        def hook(module, args, output):
            stack.pop()
            ran.add(name)
            same_shape = (isinstance(output, torch.Tensor) and bool(args) and
                          isinstance(args[0], torch.Tensor) and output.shape == args[0].shape)
            if not same_shape:  # adds its input into part of a wider output (ReXNet): skipping
                watch.adders.discard(name)  # it would return the narrower input
            if isinstance(module, layers) and isinstance(output, torch.Tensor):
                out.shapes[name] = (tuple(args[0].shape), tuple(output.shape))
                if args[0].grad_fn is not None and not any(True for _ in module.parameters(recurse=False)):
                    try:
                        out.weightless[name] = _channel_producers(args[0], produced, name)
                    except ValueError:  # it reads no layer's channels
                        pass
                if output.grad_fn is not None:
                    produced[output.grad_fn] = name
                watch.linear[name] = isinstance(module, nn.Linear)
        return hook

    for name, m in model.named_modules():
        if name:
            handles += [m.register_forward_pre_hook(before(name)),
                        m.register_forward_hook(after(name))]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), watch:
            result = model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if isinstance(result, torch.Tensor):
        out.output_layers = logits_layers(result.grad_fn, produced)
    out.unused, out.unused_parameters = unused_modules(model, ran, result)
    # the innermost modules that add their own input: one block each, not the stage around it
    out.residual_blocks = sorted(a for a in watch.adders
                                 if not any(b.startswith(a + ".") for b in watch.adders))
    return out


def unused_modules(model: nn.Module, ran: set[str], result) -> tuple[dict[str, int], set[str]]:
    """The outermost modules that did not run, with the number of parameters in them the forward
    did not use either (a module that reads a child's weight without calling it uses that
    weight), and those parameters' names. A frozen parameter read without calling its module
    leaves no trace in the autograd graph and is counted unused."""
    reached, frontier = set(), [r.grad_fn for r in _tensors(result)]
    while frontier:
        node = frontier.pop()
        if node is None or node in reached:
            continue
        reached.add(node)
        frontier.extend(n for n, _ in node.next_functions)
    used = {id(n.variable) for n in reached if hasattr(n, "variable")}
    out: dict[str, int] = {}
    names: set[str] = set()
    for name, p in model.named_parameters():
        parts = name.split(".")[:-1]
        outer = next((".".join(parts[:k]) for k in range(1, len(parts) + 1)
                      if ".".join(parts[:k]) not in ran), None)
        if outer is not None and id(p) not in used:
            out[outer] = out.get(outer, 0) + p.numel()
            names.add(name)
    return out, names


def _tensors(result) -> list[torch.Tensor]:
    """The tensors of a forward's result (a tensor, or a tuple, list or dict of them)."""
    if isinstance(result, torch.Tensor):
        return [result]
    items = result.values() if isinstance(result, dict) else result if isinstance(result, (tuple, list)) else ()
    return [t for item in items for t in _tensors(item)]


def logits_layers(node, produced: dict) -> tuple[str, ...]:
    """The layers whose outputs are the logits: the output's own layer, or the one reached by
    walking back through ops with a single activation input (pooling, flatten, activations, a
    norm with its own parameters), as in SqueezeNet's `conv -> ReLU -> pool -> flatten` head;
    through a sum, each summand's (heads averaged: DeiT's, EfficientFormer's distillation head).
    () where the path forks otherwise, or two summands reach one layer (a residual)."""
    while node is not None:
        if node in produced:
            return (produced[node],)
        inputs = [n for n, _ in node.next_functions
                  if n is not None and type(n).__name__ != "AccumulateGrad"]
        if len(inputs) > 1 and type(node).__name__.startswith("AddBackward"):
            heads = [logits_layers(n, produced) for n in inputs]
            found = tuple(layer for h in heads for layer in h)
            return found if all(heads) and len(set(found)) == len(found) else ()
        if len(inputs) != 1 or not _KEEPS_CLASSES.fullmatch(type(node).__name__):
            return ()
        node = inputs[0]
    return ()


# autograd nodes that keep each logit on its own channel (no matmul or einsum with a parameter
# hides among them: such a classifier is not one layer and stays unrecognised)
_KEEPS_CLASSES = re.compile(
    r"(View|Reshape|UnsafeView|Squeeze|Unsqueeze|Permute|Transpose|Clone|Expand|Mean|"
    r"(Adaptive)?(Avg|Max)Pool\dD(WithIndices)?|Relu|LeakyRelu|Elu|Gelu|Silu|Sigmoid|Tanh|"
    r"Hardswish|Hardsigmoid|Hardtanh|NativeBatchNorm|CudnnBatchNorm|NativeLayerNorm|Mul|Div|"
    r"(Log)?Softmax)Backward\d+")

