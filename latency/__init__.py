"""Latency as a search target: per-part tables measured on a device and runtime, and the
differentiable latency of a space's networks interpolated from them."""
from maskednas.latency.measure import ROUND_TO, RUNTIMES, measure_table, models_ms, table_meta
from maskednas.latency.model import LatencyModel
from maskednas.latency.parts import LatencyPart
from maskednas.latency.table import LatencyTable, LatencyTableError

__all__ = ["ROUND_TO", "RUNTIMES", "measure_table", "models_ms", "table_meta", "LatencyModel", "LatencyPart",
           "LatencyTable", "LatencyTableError"]
