"""Rule-based rewards: plain functions `reward(completions, **columns) -> list[float | None]`.

The contract is TRL's, so users' reward functions carry over: `completions` is the list of completion texts,
every dataset column arrives as a keyword argument holding one value per completion (plus `prompts` and
`completion_ids`), and `None` means "cannot be scored" (e.g. the gold answer does not parse). Rewards take
`**kwargs` and ignore the columns they do not use. This package never imports torch, and imports math-verify
only when a math reward first runs, so that the trainer and the scoring workers start fast.

Recipes pick rewards by name from `REWARDS` with weights, add their own with `reward.functions` (name ->
"file.py:function" or "module:function", see `loading`), and pass extra keyword arguments with `reward.args`. The
rewards in `INLINE` are linear-time text checks that run in the trainer process; every other reward (math-verify,
the code sandbox, users' functions) runs in the worker pool of `deepseek_rl.rewards.pool`, under a timeout, one
sample at a time or one group at a time for a reward marked `per_group` (`group_reward`). A reward function may
carry a `warm_up` attribute, a function that a worker calls once before it takes tasks (e.g. to import
math-verify). Rewards are called with `completions=` by keyword when they have that parameter, as TRL calls them,
so `def f(prompts, completions, **kwargs)` works too. See docs/rewards.md.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from deepseek_rl.errors import ConfigError, DataError, did_you_mean
from deepseek_rl.rewards.basic import (
    answer_match,
    format_lenient,
    format_reward,
    reasoning_steps,
    tag_count,
    think_format,
)
from deepseek_rl.rewards.coding import binary_code, code
from deepseek_rl.rewards.loading import group_reward, is_per_group, load_function
from deepseek_rl.rewards.math_answer import accuracy, cosine
from deepseek_rl.rewards.shaping import language_consistency, repetition, soft_overlong

FLOAT32_MAX = 3.4028234663852886e38  # scores become float32 tensors: anything larger overflows to inf

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


__all__ = ["INLINE", "REWARDS", "call_reward", "check_reward_args", "group_reward", "is_per_group", "resolve_reward"]


def resolve_reward(name: str, functions: Mapping[str, Any] | None = None) -> RewardFunction:
    """The reward called `name`: a user's function in `functions` (a callable, or "file.py:function" /
    "module:function"), a reward of the table, or the function at the import path `name` itself."""
    if functions and name in functions:
        target = functions[name]
        return target if callable(target) else load_function(str(target), f"reward.functions.{name}")
    if name in REWARDS:
        return REWARDS[name]
    if ":" in name:
        return load_function(name, f"reward.weights.{name}")
    hint = did_you_mean(name, REWARDS)
    raise ConfigError(
        f"reward.weights.{name}: unknown reward '{name}'.{hint} Known rewards: {', '.join(sorted(REWARDS))}; "
        f"or add your own: +reward.functions.{name}=my_rewards.py:{name}"
    )


def check_reward_args(name: str, func: RewardFunction, args: dict[str, Any]) -> None:
    """Raise ConfigError when `reward.args.<name>` holds a keyword that the reward does not take by name.

    Table rewards are checked by name (they take **kwargs only for the dataset columns); a user's function that
    takes **kwargs may accept anything."""
    parameters = inspect.signature(func).parameters
    named = [p for p, v in parameters.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
    named = [p for p in named if p != "completions"] if "completions" in parameters else named[1:]
    open_ended = name not in REWARDS and any(v.kind == v.VAR_KEYWORD for v in parameters.values())
    for key in args:
        if key not in named and not open_ended:
            raise ConfigError(
                f"reward.args.{name}.{key}: '{name}' has no parameter '{key}' (it takes: {', '.join(named) or 'none'})"
            )


def required_columns(func: RewardFunction) -> tuple[str, ...]:
    """The dataset columns a reward cannot score without: its `required_columns` attribute when it has one (the
    table's rewards take their columns as optional keywords, e.g. answer_match's `answer`), else its parameters
    without a default other than the completions (the first parameter, or the one named `completions` wherever it
    is, as TRL calls rewards by keyword) and what the trainer provides (`prompts`, `completion_ids`).

    >>> required_columns(answer_match), required_columns(lambda completions, solution, **kwargs: [])
    (('answer',), ('solution',))
    >>> required_columns(lambda prompts, completions, answer, **kwargs: [])
    ('answer',)
    """
    declared = getattr(func, "required_columns", None)
    if declared is not None:
        return tuple(declared)
    parameters = list(inspect.signature(func).parameters.values())
    by_name = any(p.name == "completions" for p in parameters)
    parameters = [p for p in parameters if p.name != "completions"] if by_name else parameters[1:]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    needed = [p for p in parameters if p.kind in kinds and p.default is inspect.Parameter.empty]
    return tuple(p.name for p in needed if p.name not in PROVIDED)


def check_reward_columns(
    reward: Any, columns: list[str], source: str, provided: tuple[str, ...] = (), functions: Mapping | None = None
) -> None:
    """Raise DataError, before any training, when a reward of `reward` (a RewardConfig: its weights, args,
    functions; its models need no column) needs a column that the data does not have: such a reward would score
    None ("cannot be scored") on every sample, and the run would learn nothing from it. reward.args and `provided`
    (values the trainer fills in by name) count as present; `functions` overrides reward.functions."""
    functions = reward.functions if functions is None else functions
    for name in (n for n in reward.weights if n not in reward.models):
        present = set(columns) | PROVIDED | set(reward.args.get(name, {})) | set(provided)
        for column in required_columns(resolve_reward(name, functions)):
            if column not in present:
                other = next((c for c in sorted(columns) if c != "prompt"), "<column>")
                raise DataError(
                    f"reward '{name}' needs the column '{column}', but {source} has columns {sorted(columns)}: "
                    f"map one of them to it with data.columns (on the command line ++data.columns.{other}={column}; "
                    f"in a recipe data: {{columns: {{{other}: {column}}}}}), or remove '{name}' from reward.weights"
                )


@functools.lru_cache(maxsize=256)
def _takes_completions_by_name(func: RewardFunction) -> bool:
    try:
        return "completions" in inspect.signature(func).parameters
    except (TypeError, ValueError):  # a builtin or an object without a signature: positional
        return False


def call_reward(
    name: str, func: RewardFunction, completions: list[Any], kwargs: dict[str, Any], columns: dict[str, list[Any]]
) -> list[float | None]:
    """Call one reward (with `completions=` by keyword when it has that parameter, as TRL does) and check that it
    kept the contract (one float or None per completion)."""
    try:
        by_name = _takes_completions_by_name(func)
    except TypeError:  # an unhashable callable object
        by_name = "completions" in inspect.signature(func).parameters
    if by_name:
        scores = list(func(completions=completions, **columns, **kwargs))
    else:
        scores = list(func(completions, **columns, **kwargs))
    if len(scores) != len(completions):
        raise ValueError(f"reward '{name}' returned {len(scores)} scores for {len(completions)} completions")
    values = [None if s is None else float(s) for s in scores]
    for value in values:  # NaN is "cannot be scored", like None; an infinite or overflowing score is an error
        if value is not None and not math.isnan(value) and not abs(value) <= FLOAT32_MAX:
            raise ValueError(
                f"reward '{name}' returned {value!r}, not a finite float32 score (|score| <= 3.4e38)"
                f"{defined_at(func)}: it would turn the advantages and the loss into NaN"
            )
    return values


def defined_at(func: Any) -> str:
    """' (defined at file:line)' for a function whose code can be found, else ''."""
    func = inspect.unwrap(func)
    code = getattr(func, "__code__", None) or getattr(vars(type(func)).get("__call__"), "__code__", None)
    return f" (defined at {code.co_filename}:{code.co_firstlineno})" if code is not None else ""
