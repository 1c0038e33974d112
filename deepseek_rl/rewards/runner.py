"""Score completions with a set of named rewards: inline text rewards in this process, the rest in a worker pool.

This is the torch-free engine behind `deepseek_rl.scoring.RewardSet` (training) and `deepseek-rl score` (offline).
Every reward is called one sample at a time (a list of one completion and one value per column), so one slow or
broken sample costs only itself: a timeout or an exception scores `on_failure` (0.0, or None for "cannot be
scored") and is counted by status, and nothing raises into the caller. Rewards that compare across the samples of a
batch therefore do not fit here.

With num_workers=0 everything runs in this process: no per-sample timeout beyond math-verify's own (which needs
the main thread), for debugging and for machines where processes are expensive.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any

from deepseek_rl.rewards import INLINE, resolve_reward
from deepseek_rl.rewards.pool import Task, WorkerPool, run_one
from deepseek_rl.rewards.sandbox import resolve_mode

STATUSES = ("ok", "timeout", "error")
# Extra seconds a reward with its own `timeout` argument (the code sandbox) gets in the pool, to clean up first.
OWN_TIMEOUT_MARGIN = 2.0


@dataclass
class Scores:
    """Scores of N completions by F rewards, with how each was obtained."""

    names: list[str]  # [F]
    values: list[list[float | None]]  # [F][N]; failed samples hold on_failure
    status: list[list[str]]  # [F][N] ok | timeout | error
    messages: list[list[str]]  # [F][N] why a sample failed ("" when ok)

    def count(self, name: str, status: str) -> int:
        return self.status[self.names.index(name)].count(status)


def default_workers() -> int:
    """The cores this process may use, shared among the ranks on this machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def with_context(func: Any, args: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """`args` plus the context values (e.g. max_completion_length) that the function takes by name."""
    parameters = inspect.signature(func).parameters
    return {**{k: v for k, v in context.items() if k in parameters}, **args}


def pool_timeout(func: Any, kwargs: dict[str, Any], timeout: float) -> float:
    """`timeout`, or more for a reward with a `timeout` parameter of its own (the code sandbox): its own value (set
    or default) plus a margin, so that it stops and cleans up before the pool kills its worker."""
    parameter = inspect.signature(func).parameters.get("timeout")
    own = kwargs.get("timeout", parameter.default if parameter is not None else None)
    if not isinstance(own, (int, float)):
        return timeout
    return max(timeout, float(own) + OWN_TIMEOUT_MARGIN)


class RewardRunner:
    """Named rewards with their arguments (plus `context` values they take by name, e.g. max_completion_length),
    scored inline or in a lazily started WorkerPool of `num_workers` processes with `timeout` seconds per task."""

    def __init__(
        self,
        names: list[str],
        args: dict[str, dict[str, Any]] | None = None,
        num_workers: int | None = None,
        timeout: float = 10.0,
        on_failure: float | None = 0.0,
        context: dict[str, Any] | None = None,
    ):
        self.names = list(names)
        self.functions = {n: resolve_reward(n) for n in self.names}
        self.kwargs = {n: with_context(self.functions[n], dict((args or {}).get(n, {})), context or {}) for n in names}
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.inline = {n for n in self.names if n in INLINE or self.num_workers == 0}
        self.timeouts = {n: pool_timeout(self.functions[n], self.kwargs[n], timeout) for n in self.names}
        for name in self.names:  # untrusted code: decide the isolation now, and refuse before any training
            if "sandbox" in inspect.signature(self.functions[name]).parameters:
                resolve_mode(self.kwargs[name].get("sandbox", "auto"))
        self.on_failure = on_failure
        self.pool: WorkerPool | None = None

    def _pool(self) -> WorkerPool:
        if self.pool is None:
            served = {n: self.kwargs[n] for n in self.names if n not in self.inline}
            self.pool = WorkerPool(self.num_workers, served)
        return self.pool

    def score(self, completions: list[str], columns: dict[str, list[Any]]) -> Scores:
        """Scores of every reward on every completion; `columns` hold one value per completion."""
        rows = [{k: v[i] for k, v in columns.items()} for i in range(len(completions))]
        outcomes: dict[str, list[tuple[str, float | None, str]]] = {}
        for name in self.names:
            if name in self.inline:
                func, kwargs = self.functions[name], self.kwargs[name]
                outcomes[name] = [run_one(func, name, kwargs, c, r) for c, r in zip(completions, rows, strict=True)]
        pooled = [n for n in self.names if n not in self.inline]
        if pooled and completions:
            tasks = [Task(n, c, r, self.timeouts[n]) for n in pooled for c, r in zip(completions, rows, strict=True)]
            done = self._pool().run(tasks)
            for j, name in enumerate(pooled):
                outcomes[name] = done[j * len(completions) : (j + 1) * len(completions)]
        return Scores(
            names=self.names,
            values=[[s if st == "ok" else self.on_failure for st, s, _ in outcomes.get(n, [])] for n in self.names],
            status=[[st for st, _, _ in outcomes.get(n, [])] for n in self.names],
            messages=[[m for _, _, m in outcomes.get(n, [])] for n in self.names],
        )

    def close(self) -> None:
        """Stop the workers (if any started). The runner can still score afterwards: it starts new ones."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None
