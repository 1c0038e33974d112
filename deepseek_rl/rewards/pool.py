"""A pool of long-lived worker processes that score one (reward, sample) task at a time, each under a timeout.

Why processes, and why our own small pool rather than multiprocessing's:
- math-verify's timeouts are SIGALRM handlers, which only work in a main thread: each worker runs tasks in its main
  thread. A computation stuck in C (a huge integer power) ignores signals: only killing the process stops it, so a
  task past its timeout kills its worker and a fresh one takes its place; the other workers keep going.
- Workers are `python -m deepseek_rl.rewards.pool FD`, not forks or multiprocessing spawns of the trainer: they
  never import torch or re-run the trainer's main module, and a trainer with threads is never forked. A worker
  imports only the rewards it serves, calls their `warm_up` (e.g. imports math-verify, or probes the code sandbox,
with the reward's arguments that it takes by name), then says it is ready; a
  task's timeout starts when a ready worker receives it.
- Tasks travel over one socket pair per worker (multiprocessing.connection: pickled tuples). The pool runs in the
  caller's thread: no background threads, nothing happens between calls.
- Workers start at the first call and are reused across steps; `close()` stops them (the owner calls it, or a
  finalizer at exit). They ignore SIGINT (the trainer decides when to stop) and die with the trainer through a
  parent-death signal, so they cannot outlive it.

A task is one call of one reward: one sample, or one group of G samples for a reward marked `per_group`. Its
outcome is (status, scores, message) with status ok | timeout | error (then scores is None). A reward that raises
TimeoutError (e.g. math-verify's own timeout) is a timeout; any other exception, or a worker that dies, is an error.
"""

from __future__ import annotations

import ctypes
import inspect
import os
import signal
import subprocess
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe, wait
from typing import Any

PR_SET_PDEATHSIG = 1
# A worker must be ready (imports + warm-up) within this many seconds, or the pool gives up on it.
START_TIMEOUT = 120.0


class PoolError(RuntimeError):
    """The workers cannot start (e.g. a reward fails to import in them): no task can run."""


@dataclass
class Task:
    """One call of one reward: on one sample, or on the G samples of a group for a `per_group` reward."""

    name: str  # reward name, as in the reward table, reward.functions, or "module:function"
    completions: list[Any]  # [K] completion texts (or TRL's message lists)
    columns: dict[str, list[Any]]  # column -> [K] values of these samples
    timeout: float


Outcome = tuple[str, "list[float | None] | None", str]  # (ok | timeout | error, K scores or None, message)


@dataclass
class _Worker:
    proc: subprocess.Popen
    conn: Connection
    started: float
    ready: bool = False
    task: tuple[int, float] | None = None  # (task index, deadline)


class WorkerPool:
    """`num_workers` processes serving the rewards `args` names (reward name -> keyword arguments); `functions`
    maps users' reward names to "file.py:function" / "module:function" (files by absolute path)."""

    def __init__(self, num_workers: int, args: dict[str, dict[str, Any]], functions: dict[str, str] | None = None):
        if num_workers < 1:
            raise ValueError(f"num_workers={num_workers} must be >= 1")
        self.num_workers = num_workers
        self.args = args
        self.functions = dict(functions or {})
        self.workers: list[_Worker] = []
        self.failed_starts = 0

    def _spawn(self) -> _Worker:
        parent, child = Pipe()
        proc = subprocess.Popen(
            [sys.executable, "-m", "deepseek_rl.rewards.pool", str(child.fileno())], pass_fds=(child.fileno(),)
        )
        child.close()
        parent.send({"sys_path": list(sys.path), "args": self.args, "functions": self.functions})
        return _Worker(proc, parent, time.monotonic())

    def _ensure_started(self) -> None:
        while len(self.workers) < self.num_workers:
            self.workers.append(self._spawn())

    def _replace(self, worker: _Worker) -> None:
        _stop(worker, kill=True)
        self.workers[self.workers.index(worker)] = self._spawn()

    def run(self, tasks: list[Task]) -> list[Outcome]:
        """Outcomes of the tasks, in order. Raises PoolError only when workers cannot start at all."""
        self._ensure_started()
        outcomes: list[Outcome | None] = [None] * len(tasks)
        queue = deque(range(len(tasks)))
        while queue or any(w.task for w in self.workers):
            for worker in self.workers:
                if worker.ready and worker.task is None and queue:
                    index = queue.popleft()
                    task = tasks[index]
                    try:
                        worker.conn.send((index, task.name, task.completions, task.columns))
                    except OSError:  # it died while idle: the task goes back to the queue
                        queue.appendleft(index)
                        self._replace(worker)
                        continue
                    worker.task = (index, time.monotonic() + task.timeout)
            self._wait(tasks, outcomes)
        return outcomes  # type: ignore[return-value]

    def _wait(self, tasks: list[Task], outcomes: list[Outcome | None]) -> None:
        now = time.monotonic()
        deadlines = [w.task[1] for w in self.workers if w.task] + [
            w.started + START_TIMEOUT for w in self.workers if not w.ready
        ]
        by_conn = {w.conn: w for w in self.workers}
        for conn in wait(list(by_conn), timeout=max(0.0, min(deadlines, default=now + 1.0) - now)):
            worker = by_conn[conn]
            try:
                message = conn.recv()
            except (EOFError, OSError):
                self._lost(worker, outcomes, f"reward worker died (exit code {_exit_code(worker.proc)})")
                continue
            if message == "ready":
                worker.ready = True
            else:
                index, status, scores, text = message
                outcomes[index] = (status, scores, text)
                worker.task = None
        now = time.monotonic()
        for worker in list(self.workers):
            if worker.task and now >= worker.task[1]:
                index = worker.task[0]
                self._lost(worker, outcomes, f"timed out after {tasks[index].timeout:g} s", status="timeout")
            elif not worker.ready and now >= worker.started + START_TIMEOUT:
                self._lost(worker, outcomes, "reward worker did not start")

    def _lost(self, worker: _Worker, outcomes: list[Outcome | None], message: str, status: str = "error") -> None:
        if worker.task is not None:
            outcomes[worker.task[0]] = (status, None, message)
        elif not worker.ready:
            self.failed_starts += 1
            if self.failed_starts > 2 * self.num_workers:
                self.close()
                raise PoolError(f"reward workers cannot start ({message}); see their traceback above")
        self._replace(worker)

    def close(self) -> None:
        """Stop every worker (politely, then SIGKILL after a moment) and reap it."""
        workers, self.workers = self.workers, []
        for worker in workers:
            try:
                worker.conn.send(None)
            except OSError:
                pass
        for worker in workers:
            _stop(worker, kill=False)


def _exit_code(proc: subprocess.Popen) -> int | None:
    try:
        return proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        return None


def _stop(worker: _Worker, kill: bool) -> None:
    if not kill:
        try:
            worker.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            kill = True
    if kill and worker.proc.poll() is None:
        worker.proc.kill()
    worker.proc.wait()
    worker.conn.close()


def run_task(
    func: Any, name: str, kwargs: dict[str, Any], completions: list[Any], columns: dict[str, list[Any]]
) -> Outcome:
    """Call one reward on some samples (one, or a group); never raises. Used by workers and in-process scoring."""
    from deepseek_rl.rewards import call_reward

    try:
        return "ok", call_reward(name, func, completions, kwargs, columns), ""
    except TimeoutError as err:
        return "timeout", None, f"{type(err).__name__}: {err}"
    except BaseException as err:  # noqa: BLE001 - a reward must never stop training, whatever it raises
        if isinstance(err, KeyboardInterrupt):
            raise
        detail = "".join(traceback.format_exception_only(type(err), err)).strip()
        return "error", None, detail[-500:] + raised_at(err)


def raised_at(err: BaseException) -> str:
    """' (at file:line in function)' of the innermost frame that raised, for the first-error report."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames or os.path.dirname(frames[-1].filename) == os.path.dirname(__file__):
        return ""  # raised by the contract check in deepseek_rl/rewards (its message names the reward already)
    frame = frames[-1]
    return f" (at {frame.filename}:{frame.lineno} in {frame.name})"


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def worker_main(fd: int) -> None:
    """A worker: resolve and warm up the rewards, say ready, then answer tasks until told to stop."""
    parent = os.getppid()
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.getppid() != parent:
        return
    conn = Connection(fd)
    setup = conn.recv()
    sys.path[:] = setup["sys_path"]
    from deepseek_rl.rewards import resolve_reward

    functions = {name: resolve_reward(name, setup["functions"]) for name in setup["args"]}
    for name, func in functions.items():
        warm_up = getattr(func, "warm_up", None)
        if warm_up is not None:  # with the reward's own arguments that it takes by name (e.g. the sandbox mode)
            parameters = inspect.signature(warm_up).parameters
            warm_up(**{k: v for k, v in setup["args"][name].items() if k in parameters})
    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        index, name, completions, columns = message
        conn.send((index, *run_task(functions[name], name, setup["args"][name], completions, columns)))


if __name__ == "__main__":
    worker_main(int(sys.argv[1]))
