"""Config validation helpers: every error names the key and says how to fix it."""

from __future__ import annotations

import difflib
import string

from deepseek_rl.errors import ConfigError


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def one_of(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{key}='{value}' is not one of {', '.join(choices)}{hint}")


def check_data_selection(filters: dict[str, dict[str, list]], prompt_template: str | None) -> None:
    """data.filters: known splits, [min, max] ranges; data.prompt_template: a valid format string."""
    for split, ranges in filters.items():
        one_of("data.filters split", split, ("train", "eval", "validation"))
        for column, bounds in ranges.items():
            numbers = all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
            require(
                len(bounds) == 2 and numbers and bounds[0] <= bounds[1],
                f"data.filters.{split}.{column}={list(bounds)} must be [min, max] with min <= max",
            )
    if prompt_template is not None:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(prompt_template) if f is not None]
        except ValueError as err:
            raise ConfigError(
                f"data.prompt_template is not a valid format string ({err}); write {{{{ for a literal brace"
            ) from err
        require(
            all(f.isidentifier() for f in fields),
            f"data.prompt_template fields {fields} must be plain column names, e.g. {{question}}",
        )
