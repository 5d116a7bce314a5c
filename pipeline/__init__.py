"""The pipeline as a library: the run config, the setup of data, loaders and supernet, and the
stages from search to export (`run`). `train.py` is its command-line front."""
from maskednas.pipeline.config import ConfigError, RunConfig, load_config, to_dict
from maskednas.pipeline.stages import STAGES, check_stages, run

__all__ = ["ConfigError", "RunConfig", "load_config", "to_dict", "STAGES", "check_stages", "run"]
