"""fvcore FLOP report of a model. Convention: one multiply-add = one FLOP (see ops/cost.py)."""
from __future__ import annotations

import warnings

import torch


def fvcore_report(model: torch.nn.Module, example: torch.Tensor) -> tuple[int, int, str]:
    """Total FLOPs, total parameters and fvcore's per-module table, for `model` in eval mode."""
    was_training = model.training
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore scripts and traces with torch.jit (deprecated)
        from fvcore.nn import FlopCountAnalysis, flop_count_table, parameter_count

        analysis = FlopCountAnalysis(model, example)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        total, table = int(analysis.total()), flop_count_table(analysis, max_depth=4)
    model.train(was_training)
    return total, int(parameter_count(model)[""]), table
