"""Rule-based rewards: plain functions `reward(completions, **columns) -> list[float | None]`.

The contract is TRL's, so users' reward functions carry over: `completions` is the list of completion texts,
every dataset column arrives as a keyword argument holding one value per completion (plus `prompts` and
`completion_ids`), and `None` means "cannot be scored" (e.g. the gold answer does not parse). Rewards take
`**kwargs` and ignore the columns they do not use. This package never imports torch, and imports math-verify
only when a math reward first runs, so that the trainer and the scoring workers start fast.

Recipes pick rewards by name from `REWARDS` (or by a "module:function" import path) with weights, and pass extra
keyword arguments with `reward.args`. The rewards in `INLINE` are linear-time text checks that run in the trainer
process; every other reward (math-verify, the code sandbox, users' functions) runs one sample at a time in the
worker pool of `deepseek_rl.rewards.pool`, under a timeout. A reward function may carry a `warm_up` attribute, a
function that a worker calls once before it takes tasks (e.g. to import math-verify). See docs/rewards.md.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from deepseek_rl.errors import ConfigError, DataError
from deepseek_rl.rewards.basic import (
    answer_match,
    format_lenient,
    format_reward,
    reasoning_steps,
    tag_count,
    think_format,
)
from deepseek_rl.rewards.coding import binary_code, code
from deepseek_rl.rewards.math_answer import accuracy, cosine
from deepseek_rl.rewards.shaping import language_consistency, repetition, soft_overlong

RewardFunction = Callable[..., list[float | None]]

# Keyword arguments the trainer passes besides the dataset columns (TRL's names).
PROVIDED = frozenset({"prompts", "completion_ids"})

REWARDS: dict[str, RewardFunction] = {
    "accuracy": accuracy,
    "answer_match": answer_match,
    "binary_code": binary_code,
    "code": code,
    "cosine": cosine,
    "format": format_reward,
    "format_lenient": format_lenient,
    "language_consistency": language_consistency,
    "reasoning_steps": reasoning_steps,
    "repetition": repetition,
    "soft_overlong": soft_overlong,
    "tag_count": tag_count,
    "think_format": think_format,
}

answer_match.required_columns = accuracy.required_columns = cosine.required_columns = ("answer",)
code.required_columns = binary_code.required_columns = ("tests",)

# Cheap text rewards scored in the trainer process (a worker round trip costs more than they do).
INLINE = frozenset(
    {"answer_match", "format", "format_lenient", "language_consistency", "reasoning_steps", "repetition"}
    | {"soft_overlong", "tag_count", "think_format"}
)


def resolve_reward(name: str) -> RewardFunction:
    """The reward called `name` in the table, or the function at import path "module:function"."""
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


def check_reward_args(name: str, func: RewardFunction, args: dict[str, Any]) -> None:
    """Raise ConfigError when `reward.args.<name>` holds a keyword that the reward does not take by name.

    Table rewards are checked by name (they take **kwargs only for the dataset columns); a user's function that
    takes **kwargs may accept anything."""
    parameters = inspect.signature(func).parameters
    named = [p for p, v in parameters.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)][1:]
    open_ended = name not in REWARDS and any(v.kind == v.VAR_KEYWORD for v in parameters.values())
    for key in args:
        if key not in named and not open_ended:
            raise ConfigError(
                f"reward.args.{name}.{key}: '{name}' has no parameter '{key}' (it takes: {', '.join(named) or 'none'})"
            )


def required_columns(func: RewardFunction) -> tuple[str, ...]:
    """The dataset columns a reward cannot score without: its `required_columns` attribute when it has one (the
    table's rewards take their columns as optional keywords, e.g. answer_match's `answer`), else its parameters
    after `completions` that have no default (TRL style: `def reward(completions, solution, **kwargs)`).

    >>> required_columns(answer_match), required_columns(lambda completions, solution, **kwargs: [])
    (('answer',), ('solution',))
    """
    declared = getattr(func, "required_columns", None)
    if declared is not None:
        return tuple(declared)
    parameters = list(inspect.signature(func).parameters.values())[1:]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in parameters if p.kind in kinds and p.default is inspect.Parameter.empty)


def check_reward_columns(
    names: list[str], args: dict[str, dict[str, Any]], columns: list[str], source: str, provided: tuple[str, ...] = ()
) -> None:
    """Raise DataError, before any training, when a reward needs a column that the data does not have: such a
    reward would score None ("cannot be scored") on every sample, and the run would learn nothing from it.
    `args` (reward.args) and `provided` (values the trainer fills in by name) count as present."""
    for name in names:
        present = set(columns) | PROVIDED | set(args.get(name, {})) | set(provided)
        for column in required_columns(resolve_reward(name)):
            if column not in present:
                other = next((c for c in sorted(columns) if c != "prompt"), "<column>")
                raise DataError(
                    f"reward '{name}' needs the column '{column}', but {source} has columns {sorted(columns)}: "
                    f"map one of them to it with data.columns (on the command line ++data.columns.{other}={column}; "
                    f"in a recipe data: {{columns: {{{other}: {column}}}}}), or remove '{name}' from reward.weights"
                )


def call_reward(
    name: str, func: RewardFunction, completions: list[str], kwargs: dict[str, Any], columns: dict[str, list[Any]]
) -> list[float | None]:
    """Call one reward and check that it kept the contract (one float or None per completion)."""
    scores = list(func(completions, **columns, **kwargs))
    if len(scores) != len(completions):
        raise ValueError(f"reward '{name}' returned {len(scores)} scores for {len(completions)} completions")
    return [None if s is None else float(s) for s in scores]
