"""Compact subnets: the `Architecture` record, building a model from it, the export folder
(arch.json + safetensors + ONNX, fp16 and int8 ONNX) and loading it back. Loading an export needs
`ops/` and this package only; loading an ONNX artefact (`load_onnx`) needs onnxruntime and numpy
only, so the names below are imported when first used, not with the package."""
from __future__ import annotations

import importlib

_HOMES = {"Architecture": ".architecture", "LayerChoice": ".architecture",
          "CompactNet": ".compact", "build": ".compact", "save_export": ".folder",
          "load": ".folder", "read_metrics": ".folder", "ExportError": ".manifest",
          "load_onnx": ".onnx_runtime", "PRECISIONS": ".onnx_runtime"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'maskednas.export' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name], __name__), name)
