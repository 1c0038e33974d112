"""Code rewards: run the completion's last fenced Python block against the row's tests in the local sandbox.

Columns: `tests`, a string of Python (each top-level assert is one test) or a list of test statements (MBPP's
`test_list`); optional `setup`, code run after the solution and before the tests (MBPP's `test_setup_code` builds
objects from the solution's classes). Rename dataset columns to these with `data.columns`.

- `code`: the fraction of tests that passed (tests that passed before a timeout count).
- `binary_code`: 1.0 only when every test passed.

A completion without a fenced Python block (```python, ```py or a bare ```) scores 0; a row without tests, or
whose tests do not parse, scores None. When the sandbox itself cannot start, the reward raises (an error that the
metrics count), so a broken sandbox never looks like a model that writes wrong code. Likewise a program that runs
past its time limit raises `TimeoutError` (the runner reports it as a timeout, counted in reward/<name>/timeouts
and scored reward.on_failure), so a hang never looks like wrong code either; the error carries `scores`, the
list with partial credit (tests passed before the timeout), for direct callers.

Isolation: `sandbox` is strong, weak or auto (reward.sandbox; see sandbox.py). The trainer passes it by name.
Limits: `timeout` (seconds), `memory_mb` (each process), `total_memory_mb` (the sandbox as a whole).
"""

from __future__ import annotations

import re
from typing import Any

from deepseek_rl.sandbox.sandbox import Execution, Limits, execute, resolve_mode

FENCE_RE = re.compile(r"```([^\n`]*)\n(.*?)```", re.DOTALL)
PYTHON_TAGS = ("", "python", "py", "python3")


def last_python_block(completion: str) -> str | None:
    """The last fenced block tagged python/py/python3 or untagged.

    >>> last_python_block("```python\\nx = 1\\n```\\nthen\\n```bash\\nls\\n```\\n```\\ny = 2\\n```")
    'y = 2\\n'
    >>> last_python_block("no code") is None
    True
    """
    blocks = [body for tag, body in FENCE_RE.findall(completion) if tag.strip().lower() in PYTHON_TAGS]
    return blocks[-1] if blocks else None


def _has_tests(tests: Any) -> bool:
    return tests is not None and (tests.strip() != "" if isinstance(tests, str) else len(tests) > 0)


class CodeTimeout(TimeoutError):
    """A program ran past its time limit; `scores` holds what every completion of the call scored."""

    def __init__(self, message: str, scores: list[float | None]):
        super().__init__(message)
        self.scores = scores


def run_completion(
    completion: str, tests: Any, setup: Any, limits: Limits, mode: str = "auto"
) -> Execution | float | None:
    """The sandbox's Execution, or the score itself when there is nothing to run (0.0 no code, None no tests)."""
    if not _has_tests(tests):
        return None
    solution = last_python_block(completion)
    if solution is None:
        return 0.0
    try:
        return execute(solution, tests, setup or "", limits, mode)
    except SyntaxError:
        return None  # the row's tests do not parse: the row cannot be scored


def _scores(completions, tests, setup, limits: Limits, binary: bool, mode: str) -> list[float | None]:
    if tests is None:
        return [None] * len(completions)
    setups = setup if setup is not None else [None] * len(completions)
    scores: list[float | None] = []
    timeouts: list[str] = []
    for completion, row_tests, row_setup in zip(completions, tests, setups, strict=True):
        result = run_completion(completion, row_tests, row_setup, limits, mode)
        if not isinstance(result, Execution):
            scores.append(result)
            continue
        if binary:
            scores.append(float(result.total > 0 and result.passed == result.total))
        else:
            scores.append(result.passed / result.total if result.total else 0.0)
        if result.timed_out:
            timeouts.append(f"passed {result.passed} of {result.total} tests before it was stopped")
    if timeouts:
        raise CodeTimeout(f"the program ran past its {limits.timeout:g} s limit ({'; '.join(timeouts)})", scores)
    return scores


def code(
    completions: list[str],
    tests: list[Any] | None = None,
    setup: list[Any] | None = None,
    timeout: float = 8.0,
    memory_mb: int = 1024,
    sandbox: str = "auto",
    total_memory_mb: int = 2048,
    **kwargs: Any,
) -> list[float | None]:
    """Fraction of the row's tests that the last Python block passes (sandboxed, `timeout` seconds in all).

    >>> code(["```python\\ndef f(x):\\n    return x * 2\\n```"], tests=[["assert f(1) == 2", "assert f(2) == 5"]])
    [0.5]
    """
    limits = Limits(timeout=timeout, memory_mb=memory_mb, total_memory_mb=total_memory_mb)
    return _scores(completions, tests, setup, limits, False, sandbox)


def binary_code(
    completions: list[str],
    tests: list[Any] | None = None,
    setup: list[Any] | None = None,
    timeout: float = 8.0,
    memory_mb: int = 1024,
    sandbox: str = "auto",
    total_memory_mb: int = 2048,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 when the last Python block passes every test of the row, else 0.0.

    >>> binary_code(["```py\\nf = abs\\n```", "f = abs"], tests=["assert f(-1) == 1\\nassert f(2) == 2"] * 2)
    [1.0, 0.0]
    """
    limits = Limits(timeout=timeout, memory_mb=memory_mb, total_memory_mb=total_memory_mb)
    return _scores(completions, tests, setup, limits, True, sandbox)


def warm_up(sandbox: str = "auto", **kwargs: Any) -> None:
    """Decide the isolation once per worker (a probe program), before the first task's timeout starts."""
    resolve_mode(sandbox)


code.warm_up = binary_code.warm_up = warm_up
