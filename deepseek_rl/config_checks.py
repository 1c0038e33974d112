"""Config validation helpers: every error names the key and says how to fix it."""

from __future__ import annotations

import difflib


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the fix."""


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def one_of(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{key}='{value}' is not one of {', '.join(choices)}{hint}")
