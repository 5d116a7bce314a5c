"""Search spaces built from `ops/`, their declared protocol (`base.Supernet`) and their
differentiable cost model. Importing this package registers the spaces it ships."""
from supernet.base import SPACES, Supernet, register_space
from supernet.cost_model import ESTIMATORS, dense_cost, discrete_cost, expected_cost, smallest_cost
from supernet.darts import DartsSpaceConfig, DartsSupernet
from supernet.macro import MacroSpaceConfig, MacroSupernet, StageSpec
from supernet.user_model import ModelSpaceConfig, UserModel

__all__ = ["SPACES", "Supernet", "register_space", "ESTIMATORS", "MacroSupernet", "MacroSpaceConfig",
           "StageSpec", "DartsSupernet", "DartsSpaceConfig", "UserModel",
           "ModelSpaceConfig", "expected_cost", "discrete_cost",
           "dense_cost", "smallest_cost"]
