"""Preemption: a SIGTERM (Slurm's warning before the kill, a spot instance reclaimed) ends a stage cleanly.

The signal only sets a flag; the stage's loop reads it at the end of the step (all ranks agree through `any_rank`),
writes a checkpoint and stops with `Preempted`, which the command line turns into its own exit status and message.
"""

from __future__ import annotations

import signal

# The exit status of a run stopped by preemption after its checkpoint was written (EX_TEMPFAIL: try again later).
PREEMPTED_EXIT = 75


class Preempted(Exception):
    """A stage stopped at a SIGTERM after saving its checkpoint; `trainer.resume=auto` continues it."""

    def __init__(self, stage: str, step: int):
        super().__init__(f"{stage} stage preempted after step {step}; checkpoint saved")
        self.stage, self.step = stage, step


class Preemption:
    """Remembers a SIGTERM so the loop can checkpoint at the end of the step instead of dying mid-update."""

    def __init__(self) -> None:
        self.requested = False
        self.previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True

    def close(self) -> None:
        """Put the previous handler back (a later stage installs its own)."""
        signal.signal(signal.SIGTERM, self.previous)
