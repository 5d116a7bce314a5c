"""Search spaces built from `ops/`, and their differentiable cost model."""
from ops.registry import Registry
from supernet.cost_model import dense_cost, discrete_cost, expected_cost, smallest_cost
from supernet.darts import DartsSpaceConfig, DartsSupernet
from supernet.macro import MacroSpaceConfig, MacroSupernet, StageSpec

SPACES = Registry("search space")
SPACES.add("macro", MacroSupernet)
SPACES.add("darts", DartsSupernet)

__all__ = ["SPACES", "MacroSupernet", "MacroSpaceConfig", "StageSpec", "DartsSupernet",
           "DartsSpaceConfig", "expected_cost", "discrete_cost", "dense_cost", "smallest_cost"]
