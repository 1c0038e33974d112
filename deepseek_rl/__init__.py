"""deepseek-rl: group-relative RL for reasoning language models.

`from deepseek_rl import load_recipe, train` is the Python entry (deepseek_rl/api.py), imported on first use so that
`import deepseek_rl` stays light (the reward workers import this package without torch).
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("load_recipe", "train"):
        from deepseek_rl import api

        return getattr(api, name)
    raise AttributeError(f"module 'deepseek_rl' has no attribute '{name}'")
