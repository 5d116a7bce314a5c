"""maskednas: differentiable architecture search with learnable channel masks, physical slimming
and export. What a user calls is here; everything else is internal.

    import maskednas
    cfg = maskednas.load_config("digits", ["search.epochs=4"])   # a shipped config, or a path
    metrics = maskednas.run(cfg, "runs/mine")                     # search -> ... -> export
    model = maskednas.load("runs/mine/export")                    # a plain nn.Module

Names are imported when first used, so that loading an export pulls in `ops` and `export` only.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it (extend here when a name becomes public)
_HOMES = {
    "load_config": "maskednas.pipeline.config", "shipped_configs": "maskednas.pipeline.config",
    "run": "maskednas.pipeline.stages",
    "load": "maskednas.export.folder", "read_metrics": "maskednas.export.folder",
    "load_onnx": "maskednas.export.onnx_runtime", "describe_export": "maskednas.export.inspect",
    "build": "maskednas.export.compact", "Architecture": "maskednas.export.architecture",
    "SPACES": "maskednas.supernet.base", "register_space": "maskednas.supernet.base",
    "Supernet": "maskednas.supernet.base",
    "COST_TARGETS": "maskednas.supernet.targets", "CostTarget": "maskednas.supernet.targets",
    "register_cost_target": "maskednas.supernet.targets",
    "LAYER_RULES": "maskednas.ops.layer_rules", "LayerRule": "maskednas.ops.layer_rules",
    "register_layer_rule": "maskednas.ops.layer_rules", "rule_for": "maskednas.ops.layer_rules",
    "AttentionRule": "maskednas.ops.attention_rules",
    "register_attention_rule": "maskednas.ops.attention_rules",
    "attention_rule_for": "maskednas.ops.attention_rules",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'maskednas' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
