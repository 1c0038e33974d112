"""Rule-based rewards: plain functions `reward(completions, **columns) -> list[float | None]`.

The contract is TRL's, so users' reward functions carry over: `completions` is the list of completion texts,
every dataset column arrives as a keyword argument holding one value per completion (plus `prompts` and
`completion_ids`), and `None` means "cannot be scored" (e.g. the gold answer does not parse). Rewards take
`**kwargs` and ignore the columns they do not use. This package never imports torch.

Recipes pick rewards by name from `REWARDS` (or by a "module:function" import path) with weights.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any

from deepseek_rl.rewards.basic import answer_match, format_reward, tag_count

RewardFunction = Callable[..., list[float | None]]

REWARDS: dict[str, RewardFunction] = {
    "answer_match": answer_match,
    "format": format_reward,
    "tag_count": tag_count,
}


def resolve_reward(name: str) -> RewardFunction:
    """The reward called `name` in the table, or the function at import path "module:function"."""
    from deepseek_rl.config import ConfigError

    if name in REWARDS:
        return REWARDS[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            func = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"reward.weights.{name}: cannot import '{attr}' from '{module_name}' ({err})") from err
        if not callable(func):
            raise ConfigError(f"reward.weights.{name}: '{name}' is not callable")
        return func
    close = difflib.get_close_matches(name, REWARDS, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(
        f"reward.weights.{name}: unknown reward '{name}'.{hint} Known rewards: {', '.join(sorted(REWARDS))}; "
        "or give your own as 'module:function'"
    )


def call_reward(
    name: str, func: RewardFunction, completions: list[str], kwargs: dict[str, Any], columns: dict[str, list[Any]]
) -> list[float | None]:
    """Call one reward and check that it kept the contract (one float or None per completion)."""
    scores = list(func(completions, **columns, **kwargs))
    if len(scores) != len(completions):
        raise ValueError(f"reward '{name}' returned {len(scores)} scores for {len(completions)} completions")
    return [None if s is None else float(s) for s in scores]
