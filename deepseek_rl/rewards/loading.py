"""Users' reward functions: found by a file path or an import path, declared per sample or per group.

    reward.functions.brevity=my_rewards.py:brevity        a file (relative to the working directory, or absolute)
    reward.functions.brevity=my_pkg.rewards:brevity       a module on the Python path or in the working directory

A file is imported by its path (importlib's spec_from_file_location) under a module name derived from the
absolute path, once per process: the trainer imports it when the config is checked, so a missing file, a syntax
error or a missing function is a one-line ConfigError before any model loads, and every reward worker imports the
same file by the same absolute path (it does not need to be on the workers' Python path).

A reward is called on one sample at a time unless it declares that it scores a whole group: the attribute
`per_group = True` (set by the `group_reward` decorator, or by hand so that the file needs nothing from this
package), and then it is called once with the G completions of one prompt. This module never imports torch.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deepseek_rl.errors import ConfigError, did_you_mean

RewardFunction = Callable[..., list[float | None]]


def group_reward(func: RewardFunction) -> RewardFunction:
    """Declare that `func` scores all G completions of one prompt in one call (e.g. ranks them against each
    other); it still returns one score per completion. Equivalent to setting `func.per_group = True`."""
    func.per_group = True  # type: ignore[attr-defined]
    return func


def is_per_group(func: Any) -> bool:
    return getattr(func, "per_group", False) is True


def is_file_spec(target: str) -> bool:
    """Does the part before ':' name a file rather than a module?"""
    return target.endswith(".py") or "/" in target or "\\" in target


def absolute_spec(spec: str) -> str:
    """`spec` with a relative file path made absolute (against the working directory); module paths unchanged."""
    target, sep, attr = spec.rpartition(":")
    if sep and is_file_spec(target):
        return f"{Path(target).expanduser().absolute()}:{attr}"
    return spec


def import_file(path: Path, key: str) -> Any:
    """The module of a Python file, imported once per process under a name derived from its absolute path."""
    path = path.expanduser().absolute()
    if not path.is_file():
        raise ConfigError(f"{key}: no such file {path}; give 'file.py:function' (relative to the working directory)")
    name = f"deepseek_rl_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{key}: {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - any error in the user's file becomes one line naming it
        del sys.modules[name]
        line = f" (line {err.lineno})" if isinstance(err, SyntaxError) and err.lineno else ""
        raise ConfigError(f"{key}: importing {path} failed: {type(err).__name__}: {err}{line}") from err
    return module


def load_function(spec: str, key: str) -> RewardFunction:
    """The function of 'file.py:function' or 'package.module:function'; `key` names the config key in errors."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(f"{key}={spec}: give 'file.py:function' or 'package.module:function'")
    if is_file_spec(target):
        module = import_file(Path(target), key)
    else:
        if os.getcwd() not in sys.path:  # as `python -m` would: a module beside the user is importable
            sys.path.append(os.getcwd())
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise ConfigError(f"{key}: cannot import module '{target}' ({err}); for a file write {target}.py") from err
    func = getattr(module, attr, None)
    if func is None:
        found = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_"))
        hint = did_you_mean(attr, found)
        raise ConfigError(
            f"{key}: '{target}' has no function '{attr}'.{hint} It defines: {', '.join(found) or 'no function'}"
        )
    if not callable(func):
        raise ConfigError(f"{key}: '{attr}' in '{target}' is not callable")
    return func
