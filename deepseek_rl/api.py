"""The Python entry: compose a recipe, then run its stages with your own reward functions (TRL's `reward_funcs`).

    from deepseek_rl import load_recipe, train

    def brevity(completions, **kwargs):
        return [-len(c) / 100 for c in completions]

    cfg = load_recipe("smoke", ["trainer.max_steps=2"])
    cfg.reward.weights["brevity"] = 0.5          # optional: a callable without a weight gets 1.0
    train(cfg, "runs/mine", reward_funcs={"brevity": brevity})

Callables run in the training process (they may hold state, a client or a model), one sample per call, or one group
per call when marked `per_group` (`deepseek_rl.rewards.group_reward`); their metrics are `reward/<name>/...` like
every reward's. Rewards named in the config (`reward.functions`: "file.py:function") run in the reward workers.
"""

from __future__ import annotations

import time
from pathlib import Path

from deepseek_rl.config.schema import Config
from deepseek_rl.config.store import load_recipe
from deepseek_rl.infra.distributed import release_accelerator
from deepseek_rl.stages.grpo import RewardFunctions
from deepseek_rl.stages.pipeline import run_stages

__all__ = ["load_recipe", "train"]


def train(
    cfg: Config, output_dir: str | Path | None = None, reward_funcs: RewardFunctions | None = None
) -> dict[str, Path]:
    """Run `cfg.stages` into `output_dir` (default: trainer.output_dir, else runs/python/<time>); returns each
    training stage's checkpoint directory."""
    directory = output_dir or cfg.trainer.output_dir or f"runs/python/{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    for name, func in (reward_funcs or {}).items():
        if not callable(func):
            raise TypeError(f"reward_funcs['{name}'] is {type(func).__name__}, not a callable")
    try:
        return run_stages(cfg, Path(directory), reward_funcs)
    finally:
        release_accelerator()
