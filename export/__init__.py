"""Compact subnets: the `Architecture` record, building a model from it, and the export folder
(arch.json + safetensors + ONNX). Loading an export needs `ops/` and this package only."""
from export.architecture import Architecture, LayerChoice
from export.build import CompactNet, build
from export.folder import ExportError, load, read_metrics, save_export

__all__ = ["Architecture", "LayerChoice", "CompactNet", "build", "ExportError", "load",
           "read_metrics", "save_export"]
