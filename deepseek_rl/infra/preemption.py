"""Preemption: a SIGTERM (Slurm's warning before the kill, a spot instance reclaimed) ends a run cleanly.

The signal only sets a flag. A training stage reads it at the end of each step (all ranks agree through
`any_rank`), writes a checkpoint and stops with `Preempted`; the evaluation stage reads it between generation
batches (the models it finished keep their results); the pipeline reads it between stages. The command line turns
`Preempted` into its own exit status and one line, and `trainer.resume=auto` continues: finished stages are skipped,
the interrupted one resumes from its checkpoint.

One flag per process: the pipeline installs the handler for the whole run, so a SIGTERM that arrives while a
model loads, between stages or during an export is remembered and honoured at the next check instead of killing
the process; a stage's own `Preemption()` shares that flag (and installs the handler when it runs alone).
"""

from __future__ import annotations

import signal

# The exit status of a run stopped by preemption after its checkpoint was written (EX_TEMPFAIL: try again later).
PREEMPTED_EXIT = 75

_REQUESTED = [False]


class Preempted(Exception):
    """A stage stopped at a SIGTERM after saving what it had; `trainer.resume=auto` continues it."""

    def __init__(self, stage: str, step: int | None = None, detail: str | None = None):
        super().__init__(f"{stage} stage preempted {detail or f'after step {step}; checkpoint saved'}")
        self.stage, self.step = stage, step


def _handle(signum: int, frame: object) -> None:
    _REQUESTED[0] = True


class Preemption:
    """Remembers a SIGTERM so a loop can stop at a safe point instead of dying mid-update.

    The outermost instance installs the handler (and clears the flag: a new run starts unpreempted); nested ones
    share it. `close()` puts the previous handler back only where this instance installed it."""

    def __init__(self) -> None:
        self.installed = signal.getsignal(signal.SIGTERM) is not _handle
        self.previous = signal.signal(signal.SIGTERM, _handle) if self.installed else None
        if self.installed:
            _REQUESTED[0] = False

    @property
    def requested(self) -> bool:
        return _REQUESTED[0]

    def close(self) -> None:
        if self.installed:
            signal.signal(signal.SIGTERM, self.previous)
            self.installed = False
