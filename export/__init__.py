"""Derive, slim, build and export compact subnets."""
from export.architecture import Architecture, LayerChoice
from export.build import CompactNet, build
from export.discretize import Derivation, derive
from export.folder import ExportError, load, read_metrics, save_export

__all__ = ["Architecture", "LayerChoice", "CompactNet", "build", "Derivation", "derive",
           "ExportError", "load", "read_metrics", "save_export"]
