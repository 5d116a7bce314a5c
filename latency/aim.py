"""Aiming a latency derivation by what the derived network measures.

A table predicts a network from its parts. What it leaves out (activations and residual adds on
channel groups pruned unevenly, a runtime's fusions across layers) can put a derived network 10%
off its target as timed (docs/benchmarks.md, "A user's network"). So, as NetAdapt does with
empirical measurements, the derived network is timed in alternation with the dense one; when its
measured fraction of the dense network misses the target's fraction by more than `tolerance`,
derivation is aimed again, up to `corrections` times: at the table figure scaled by the miss, or,
once two tries fall either side of the target, between them (linearly); the derivation that
measured closest is kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

D = TypeVar("D")

# the spread of alternated, lowest-of-medians timings of one network on a shared 2-core CPU
MEASURED_TOLERANCE = 0.05


@dataclass
class Aimed(Generic[D]):
    derivation: D
    aim_ms: float  # the table figure the kept derivation was aimed at
    measured_fraction: float  # its measured latency over the dense network's, timed alongside
    tries: list[dict] = field(default_factory=list)  # every derivation's aim and measured fraction


def aim_by_measurement(derive_at: Callable[[float], D], measured_fraction: Callable[[D], float],
                       target_ms: float, dense_ms: float, corrections: int,
                       tolerance: float = MEASURED_TOLERANCE, fastest_ms: float = 0.0) -> Aimed[D]:
    """Derive at `target_ms` (table milliseconds), then re-aim up to `corrections` times until the
    measured fraction is within `tolerance` of `target_ms / dense_ms`; never aimed above the dense
    network's `dense_ms` nor below the fastest reachable one's `fastest_ms`."""
    goal = target_ms / dense_ms
    aim, best, tries = target_ms, None, []
    for _ in range(corrections + 1):
        d = derive_at(aim)
        fraction = measured_fraction(d)
        if not fraction > 0:
            raise ValueError(f"a derived network measured {fraction} of the dense network's latency: "
                             "the timing is broken")
        tries.append({"aim_ms": aim, "measured_fraction": fraction})
        if best is None or abs(fraction / goal - 1) < abs(best.measured_fraction / goal - 1):
            best = Aimed(d, aim, fraction)
        if abs(fraction / goal - 1) <= tolerance:
            break
        aim = max(_next_aim(tries, goal, dense_ms), fastest_ms)
        if any(abs(t["aim_ms"] - aim) <= 1e-9 * dense_ms for t in tries):  # nothing new to try
            break
    best.tries = tries
    return best


def _next_aim(tries: list[dict], goal: float, dense_ms: float) -> float:
    below = [t for t in tries if t["measured_fraction"] < goal]
    above = [t for t in tries if t["measured_fraction"] > goal]
    if below and above:  # bracketed: the line between the closest try on either side
        lo = max(below, key=lambda t: t["measured_fraction"])
        hi = min(above, key=lambda t: t["measured_fraction"])
        share = (goal - lo["measured_fraction"]) / (hi["measured_fraction"] - lo["measured_fraction"])
        return lo["aim_ms"] + share * (hi["aim_ms"] - lo["aim_ms"])
    last = tries[-1]
    return min(last["aim_ms"] * goal / last["measured_fraction"], dense_ms)
