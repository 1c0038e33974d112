"""Configuration: typed dataclasses per recipe group (schema.py, data.py, reward.py, rollout.py, stages.py,
lora.py), their checks (checks.py), the batch plan derived once per stage (plan.py), and Hydra registration
(store.py).

`from deepseek_rl.config import Config, load_recipe` is the public surface; modules inside this package import
each other by their own paths, never through this file. Hydra is imported on first use of `load_recipe` or
`register_configs`, so the dataclasses work where Hydra is not installed (the GPU check's engine sections).
"""

from typing import Any

from deepseek_rl.config.data import DataConfig
from deepseek_rl.config.lora import LoraConfig
from deepseek_rl.config.plan import BatchPlan, finetune_plan, grpo_plan
from deepseek_rl.config.reward import RewardConfig
from deepseek_rl.config.rollout import RolloutConfig, ToolsConfig, VLLMConfig
from deepseek_rl.config.schema import (
    STAGES,
    AlgorithmConfig,
    Config,
    LoggerConfig,
    ModelConfig,
    OptimizerConfig,
    TrainerConfig,
    model_context_length,
)
from deepseek_rl.config.stages import ControlConfig, EvalConfig, RFTConfig, SFTConfig
from deepseek_rl.errors import ConfigError

__all__ = [
    "STAGES",
    "AlgorithmConfig",
    "BatchPlan",
    "Config",
    "ControlConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LoggerConfig",
    "LoraConfig",
    "ModelConfig",
    "OptimizerConfig",
    "RFTConfig",
    "RewardConfig",
    "RolloutConfig",
    "SFTConfig",
    "ToolsConfig",
    "TrainerConfig",
    "VLLMConfig",
    "finetune_plan",
    "grpo_plan",
    "load_recipe",
    "model_context_length",
    "register_configs",
]


def __getattr__(name: str) -> Any:
    if name in ("load_recipe", "register_configs"):
        from deepseek_rl.config import store

        return getattr(store, name)
    raise AttributeError(f"module 'deepseek_rl.config' has no attribute '{name}'")
