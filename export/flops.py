"""fvcore FLOP report of a model. Convention: one multiply-add = one FLOP (see ops/cost.py)."""
from __future__ import annotations

import math
import warnings
from collections import Counter

import torch


def _convolution_mode(inputs, outputs) -> Counter:
    """`aten::_convolution_mode`, a convolution with string padding ('same', 'valid'; ConvMixer),
    which fvcore has no handle for and would count as 0: counted as fvcore counts any other."""
    from fvcore.nn.jit_handles import conv_flop_count, get_shape
    return Counter({"conv": conv_flop_count(get_shape(inputs[0]), get_shape(inputs[1]),
                                            get_shape(outputs[0]), transposed=False)})


def _attention(inputs, outputs) -> Counter:
    """`aten::scaled_dot_product_attention`, which fvcore has no handle for and would count as 0:
    its two products, q @ k^T and the weights @ v, as fvcore counts a matmul."""
    from fvcore.nn.jit_handles import get_shape
    q, k, v = (get_shape(x) for x in inputs[:3])
    return Counter({"matmul": math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])})


def flop_analysis(model: torch.nn.Module, example: torch.Tensor):
    """fvcore's `FlopCountAnalysis` of `model` (in its current mode) on `example`, quiet, with
    string-padded convolutions and fused attention counted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore scripts and traces with torch.jit (deprecated)
        from fvcore.nn import FlopCountAnalysis
        analysis = FlopCountAnalysis(model, example).set_op_handle(
            "aten::_convolution_mode", _convolution_mode,
            "aten::scaled_dot_product_attention", _attention)
    return analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)


def fvcore_report(model: torch.nn.Module, example: torch.Tensor) -> tuple[int, int, str]:
    """Total FLOPs, total parameters and fvcore's per-module table, for `model` in eval mode."""
    was_training = model.training
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import flop_count_table, parameter_count

        analysis = flop_analysis(model, example)
        total, table = int(analysis.total()), flop_count_table(analysis, max_depth=4)
    model.train(was_training)
    return total, int(parameter_count(model)[""]), table
