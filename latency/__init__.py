"""Latency as a search target: per-part tables measured on a device and runtime, and the
differentiable latency of a space's networks interpolated from them."""
from latency.measure import RUNTIMES, measure_table, models_ms, table_meta
from latency.model import LatencyModel
from latency.parts import LatencyPart
from latency.table import LatencyTable, LatencyTableError

__all__ = ["RUNTIMES", "measure_table", "models_ms", "table_meta", "LatencyModel", "LatencyPart",
           "LatencyTable", "LatencyTableError"]
