"""Typed, frozen recipes: `load_config(recipe, overrides)` -> Config; `derive(cfg, world_size)` ->
DerivedConfig (the Config plus its RunPlan: world size, global batch, peak lr, EMA decay)."""

from .derive import derive, global_batch
from .errors import ConfigError
from .io import load_resolved, save_config, to_dict, to_yaml
from .load import load_config, parse_override, valid_keys
from .schema import (
    CheckpointConfig,
    Config,
    DataConfig,
    DerivedConfig,
    EmaConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    RunPlan,
    SlurmConfig,
    StrategyConfig,
    TokenLabelConfig,
)

__all__ = [
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DerivedConfig",
    "EmaConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "RunPlan",
    "SlurmConfig",
    "StrategyConfig",
    "TokenLabelConfig",
    "derive",
    "global_batch",
    "load_config",
    "load_resolved",
    "parse_override",
    "save_config",
    "to_dict",
    "to_yaml",
    "valid_keys",
]
