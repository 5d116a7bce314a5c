"""Cost targets: the figures a search can aim at (MACs, params, latency, peak activation memory).

Each target is one file here: a `CostTarget` subclass registered under the name that configures
it (`search.targets.<name>: {value: V}` or `{fraction: F}` of the dense network's figure, and
`derive.target.<name>: V`). The penalty, derivation, the search's target hold, op promotion,
TensorBoard, the summary and metrics.json read the registry; nothing else names a target. To add
one, subclass `CostTarget` in a new file, decorate it with `@register_cost_target`, and import the
file below (or from your own code before the config is loaded).

    >>> from maskednas import COST_TARGETS
    >>> sorted(COST_TARGETS.names())
    ['latency_ms', 'macs', 'params', 'peak_memory_kib']
"""
from maskednas.supernet.targets.base import (COST_TARGETS, CostTarget, TargetError, register_cost_target,
                                             resolve_targets)
from maskednas.supernet.targets import latency, macs, params, peak_memory  # noqa: F401  (registers them)

__all__ = ["COST_TARGETS", "CostTarget", "TargetError", "register_cost_target", "resolve_targets"]
