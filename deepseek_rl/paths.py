"""Where the recipes, the launch configs and the shared data live, resolved at run time.

The recipes and the accelerate launch configs ship inside the package (`deepseek_rl/recipes`, `deepseek_rl/launch`),
so a wheel installed anywhere has them; the checkout's top-level `recipes/` and `launch/` are symlinks to those
folders, so `--config_file launch/zero3.yaml` and the paths in the docs keep working from a clone.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


def recipes_dir() -> Path:
    """The packaged recipes (override with DEEPSEEK_RL_RECIPES)."""
    return Path(os.environ.get("DEEPSEEK_RL_RECIPES", PACKAGE_DIR / "recipes")).resolve()


def launch_dir() -> Path:
    """The packaged accelerate launch configs (`launch/` of a checkout is a symlink to it)."""
    return PACKAGE_DIR / "launch"


def shared_dir() -> Path:
    """The shared data and tokenizer folder: DEEPSEEK_RL_SHARED, else `../shared` beside the checkout."""
    return Path(os.environ.get("DEEPSEEK_RL_SHARED", REPO_DIR.parent / "shared")).resolve()
