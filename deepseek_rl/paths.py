"""Where the recipes and the shared data live, resolved at run time (never copied into the project)."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


def recipes_dir() -> Path:
    """`recipes/` of the checkout (override with DEEPSEEK_RL_RECIPES)."""
    return Path(os.environ.get("DEEPSEEK_RL_RECIPES", REPO_DIR / "recipes")).resolve()


def shared_dir() -> Path:
    """The shared data and tokenizer folder: DEEPSEEK_RL_SHARED, else `../shared` beside the checkout."""
    return Path(os.environ.get("DEEPSEEK_RL_SHARED", REPO_DIR.parent / "shared")).resolve()
