"""Score completions with a set of named rewards: inline text rewards in this process, the rest in a worker pool.

This is the torch-free engine behind `deepseek_rl.stages.reward_set.RewardSet` (training, evaluation) and
`deepseek-rl score` (offline). A reward is called one sample at a time (a list of one completion and one value per
column), so one slow or broken sample costs only itself; a reward marked `per_group` is called once per group of G
completions of one prompt (the caller says how long groups are; without groups, once on everything). A timeout or
an exception scores `on_failure` (0.0, or None for "cannot be scored") for the samples of that call and is counted
by status, and nothing raises into the caller.

Where rewards run: the cheap table rewards of `INLINE` in this process; callables given from Python (they may hold
state, a client, a model) in this process too; every other reward (math-verify, the code sandbox, users'
"file.py:function" rewards) in the worker pool.

TRL's conversational format: when the columns hold `prompt_messages` (the prompt set adds it when the data is
rendered with a chat template, `data.template=chat`), users' rewards receive `completions` as message lists,
`[[{"role": "assistant", "content": text}], ...]`, and `prompts` as each prompt's messages, exactly as TRL passes
them, so a reward written for TRL's `completion[0]["content"]` runs unchanged. The table rewards always receive text
(they read the rendered prompt: e.g. `format` checks whether it opened `<think>`), and no reward receives the
`prompt_messages` column itself.

With num_workers=0 everything runs in this process: no per-sample timeout beyond math-verify's own (which needs
the main thread), for debugging and for machines where processes are expensive.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deepseek_rl.errors import ConfigError
from deepseek_rl.rewards import INLINE, REWARDS, resolve_reward
from deepseek_rl.rewards.loading import absolute_spec, is_per_group
from deepseek_rl.rewards.pool import Outcome, Task, WorkerPool, run_task
from deepseek_rl.sandbox.sandbox import resolve_mode

STATUSES = ("ok", "timeout", "error")
# Extra seconds a reward with its own `timeout` argument (the code sandbox) gets in the pool, to clean up first.
OWN_TIMEOUT_MARGIN = 2.0
# The column holding each prompt's chat messages when the data is rendered with a chat template (data/prompts.py).
PROMPT_MESSAGES = "prompt_messages"


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
    scored inline or in a lazily started WorkerPool of `num_workers` processes with `timeout` seconds per task.
    `functions` maps users' reward names to callables or to "file.py:function" / "module:function"."""

    def __init__(
        self,
        names: list[str],
        args: dict[str, dict[str, Any]] | None = None,
        num_workers: int | None = None,
        timeout: float = 10.0,
        on_failure: float | None = 0.0,
        context: dict[str, Any] | None = None,
        functions: Mapping[str, Any] | None = None,
    ):
        self.names = list(names)
        given = {n: v for n, v in (functions or {}).items() if n in self.names}
        self.specs = {n: absolute_spec(v) for n, v in given.items() if isinstance(v, str)}
        self.functions = {n: resolve_reward(n, {**given, **self.specs}) for n in self.names}
        self.kwargs = {n: with_context(self.functions[n], dict((args or {}).get(n, {})), context or {}) for n in names}
        self.num_workers = default_workers() if num_workers is None else num_workers
        objects = {n for n in given if n not in self.specs}  # callables from Python: this process
        cheap = {n for n in self.names if n in INLINE and n not in given}
        self.inline = {n for n in self.names if n in cheap or n in objects or not self.num_workers}
        self.users = {n for n in self.names if n in given or n not in REWARDS}  # get TRL's conversational format
        self.timeouts = {n: pool_timeout(self.functions[n], self.kwargs[n], timeout) for n in self.names}
        for name in self.names:  # untrusted code: decide the isolation now, and refuse before any training
            if "sandbox" in inspect.signature(self.functions[name]).parameters:
                resolve_mode(self.kwargs[name].get("sandbox", "auto"))
        self.on_failure = on_failure
        self.pool: WorkerPool | None = None
        self.batching_checked = False  # users' per-sample rewards are checked once for batch-level scoring

    def _pool(self) -> WorkerPool:
        if self.pool is None:
            served = {n: self.kwargs[n] for n in self.names if n not in self.inline}
            self.pool = WorkerPool(self.num_workers, served, {n: s for n, s in self.specs.items() if n in served})
        return self.pool

    @staticmethod
    def _views(completions: list[str], columns: dict[str, list[Any]]) -> dict[bool, tuple[list, dict]]:
        """(completions, columns) as text for the table rewards, and for users' rewards: TRL's messages when the
        data is chat-formatted, the same text otherwise."""
        text = {k: v for k, v in columns.items() if k != PROMPT_MESSAGES}
        if PROMPT_MESSAGES not in columns:
            return {False: (completions, text), True: (completions, text)}
        messages = [[{"role": "assistant", "content": c}] for c in completions]
        return {False: (completions, text), True: (messages, {**text, "prompts": columns[PROMPT_MESSAGES]})}

    def score(self, completions: list[str], columns: dict[str, list[Any]], group_size: int | None = None) -> Scores:
        """Scores of every reward on every completion; `columns` hold one value per completion. Groups are the
        `group_size` consecutive completions of one prompt (None: all of them form one group)."""
        count = len(completions)
        views = self._views(completions, columns)
        calls: dict[str, list[tuple[int, int]]] = {}
        for name in self.names:
            size = (group_size or count) if is_per_group(self.functions[name]) else 1
            calls[name] = [(i, min(i + size, count)) for i in range(0, count, max(size, 1))]
        results: dict[str, list[Outcome]] = {}
        for name in self.names:
            if name in self.inline:
                func, kwargs = self.functions[name], self.kwargs[name]
                texts, cols = views[name in self.users]
                results[name] = [
                    run_task(func, name, kwargs, texts[a:b], {k: v[a:b] for k, v in cols.items()})
                    for a, b in calls[name]
                ]
        pooled = [n for n in self.names if n not in self.inline]
        if pooled and count:
            tasks, owners = [], []
            for name in pooled:
                texts, cols = views[name in self.users]
                for a, b in calls[name]:
                    tasks.append(Task(name, texts[a:b], {k: v[a:b] for k, v in cols.items()}, self.timeouts[name]))
                    owners.append(name)
            for name, outcome in zip(owners, self._pool().run(tasks), strict=True):
                results.setdefault(name, []).append(outcome)
        per_sample = {n: expand(results.get(n, []), calls[n]) for n in self.names}
        if not self.batching_checked and count >= 2:
            self.batching_checked = True
            self.check_per_sample(per_sample, views, min(group_size or count, count))
        return Scores(
            names=self.names,
            values=[[s if st == "ok" else self.on_failure for st, s, _ in per_sample[n]] for n in self.names],
            status=[[st for st, _, _ in per_sample[n]] for n in self.names],
            messages=[[m for _, _, m in per_sample[n]] for n in self.names],
        )

    def check_per_sample(self, per_sample: dict[str, list], views: dict, size: int) -> None:
        """A user's reward called one sample at a time must score a sample alike when it sees the group: call it
        once more on the first group as a whole and compare. A reward that compares completions with each other
        (open-r1's len_reward) would otherwise be silently wrong: refuse it with the fix."""
        names = [n for n in self.names if n in self.users and not is_per_group(self.functions[n])]
        for name in names:
            texts, cols = views[True]
            task = Task(name, texts[:size], {k: v[:size] for k, v in cols.items()}, self.timeouts[name])
            if name in self.inline:
                outcome = run_task(self.functions[name], name, self.kwargs[name], task.completions, task.columns)
            else:
                outcome = self._pool().run([task])[0]
            status, scores, _ = outcome
            singles = per_sample[name][:size]
            if status != "ok" or scores is None or any(st != "ok" for st, _, _ in singles):
                continue  # a failing reward is reported as such, not judged here
            alone = [s for _, s, _ in singles]
            if any(_differ(a, b) for a, b in zip(scores, alone, strict=True)):
                raise ConfigError(
                    f"reward '{name}' scores the {size} completions of a group differently when it gets them together "
                    f"({_short(scores)}) than one at a time ({_short(alone)}): it compares completions with each "
                    "other (as open-r1's len_reward does), but rewards are called one sample at a time. Mark it "
                    "@group_reward (from deepseek_rl.rewards) to receive each group of G completions in one call, or "
                    "make it score each completion on its own"
                )

    def close(self) -> None:
        """Stop the workers (if any started). The runner can still score afterwards: it starts new ones."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def _differ(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return (a is None) != (b is None)
    return not (a == b or abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b)) or (a != a and b != b))


def _short(scores: list) -> str:
    return ", ".join("None" if s is None else f"{s:.3g}" for s in scores[:4]) + (", ..." if len(scores) > 4 else "")


def expand(outcomes: list[Outcome], spans: list[tuple[int, int]]) -> list[tuple[str, float | None, str]]:
    """Per-call outcomes -> one (status, score, message) per sample; a failed call fails each of its samples."""
    samples = []
    for (status, scores, message), (a, b) in zip(outcomes, spans, strict=True):
        for j in range(b - a):
            samples.append((status, scores[j] if status == "ok" and scores is not None else None, message))
    return samples
