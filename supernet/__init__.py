"""Search spaces built from `ops/`, their declared protocol (`base.Supernet`) and their
differentiable cost model. Importing this package registers the spaces it ships."""
from maskednas.supernet.base import SPACES, Supernet, register_space
from maskednas.supernet.cost_model import ESTIMATORS, dense_cost, discrete_cost, expected_cost, smallest_cost
from maskednas.supernet.darts import DartsSpaceConfig, DartsSupernet
from maskednas.supernet.macro import MacroSpaceConfig, MacroSupernet, StageSpec
from maskednas.supernet.user_model import ModelSpaceConfig, UserModel

__all__ = ["SPACES", "Supernet", "register_space", "ESTIMATORS", "MacroSupernet", "MacroSpaceConfig",
           "StageSpec", "DartsSupernet", "DartsSpaceConfig", "UserModel",
           "ModelSpaceConfig", "expected_cost", "discrete_cost",
           "dense_cost", "smallest_cost"]
