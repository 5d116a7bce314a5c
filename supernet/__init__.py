"""Search spaces built from `ops/`, and their differentiable cost model."""
from ops.registry import Registry
from supernet.cost_model import dense_cost, expected_cost, network_cost, smallest_cost
from supernet.macro import MacroSpaceConfig, MacroSupernet, StageSpec

SPACES = Registry("search space")
SPACES.add("macro", MacroSupernet)

__all__ = ["SPACES", "MacroSupernet", "MacroSpaceConfig", "StageSpec", "expected_cost",
           "network_cost", "dense_cost", "smallest_cost"]
