"""Preemption and Ctrl-C: a SIGTERM (Slurm's warning before the kill, a spot instance reclaimed) or a SIGINT (Ctrl-C
in the terminal) ends a run cleanly.

The signal only sets a flag. A training stage reads it at the end of each step (all ranks agree through
`any_rank`), writes a checkpoint and stops with `Preempted`; the evaluation stage reads it between generation
batches (the models it finished keep their results); the pipeline reads it between stages. The command line turns
`Preempted` into one line and its exit status: 75 after a SIGTERM (EX_TEMPFAIL: a scheduler requeues it), 130
after Ctrl-C (128 + SIGINT, what a shell reports for an interrupted command); `trainer.resume=auto` continues:
finished stages are skipped, the interrupted one resumes from its checkpoint.

Ctrl-C: the first one says at once (one line on stderr) that the run will stop after this step's checkpoint, and
that a second Ctrl-C stops at once; the second raises KeyboardInterrupt wherever the run is (the command line ends
it with one line and status 130, without a checkpoint of the step in progress: the previous ones are whole, as
checkpoints are written to a temporary folder and renamed). The reward workers ignore SIGINT (the trainer decides
when they stop) and the sandboxes run in their own sessions, so a Ctrl-C in the terminal reaches the trainer only.

One flag per process: the pipeline installs the handlers for the whole run, so a signal that arrives while a
model loads, between stages or during an export is remembered and honoured at the next check instead of killing
the process; a stage's own `Preemption()` shares that flag (and installs the handlers when it runs alone).
"""

from __future__ import annotations

import os
import signal

# The exit status of a run stopped by preemption after its checkpoint was written (EX_TEMPFAIL: try again later).
PREEMPTED_EXIT = 75
# The exit status of a run stopped by Ctrl-C (128 + SIGINT), after its checkpoint or, at a second Ctrl-C, at once.
INTERRUPTED_EXIT = 130
SIGNALS = (signal.SIGTERM, signal.SIGINT)

_REQUESTED: list[int | None] = [None]  # the first signal that asked the run to stop
_CTRL_C = [0]  # Ctrl-Cs received since the run started


class Preempted(Exception):
    """A stage stopped at a SIGTERM or Ctrl-C after saving what it had; `trainer.resume=auto` continues it.
    `exit_status` is 75 (SIGTERM) or 130 (Ctrl-C)."""

    def __init__(self, stage: str, step: int | None = None, detail: str | None = None):
        ctrl_c = _REQUESTED[0] == signal.SIGINT
        how = "interrupted (Ctrl-C)" if ctrl_c else "preempted"
        super().__init__(f"{stage} stage {how} {detail or f'after step {step}; checkpoint saved'}")
        self.stage, self.step = stage, step
        self.exit_status = INTERRUPTED_EXIT if ctrl_c else PREEMPTED_EXIT


def _handle(signum: int, frame: object) -> None:
    if signum == signal.SIGINT:
        _CTRL_C[0] += 1
        if _CTRL_C[0] > 1:
            raise KeyboardInterrupt  # the second Ctrl-C: stop at once
        # os.write, not print: the handler may run while the main thread is inside a print to stderr
        os.write(2, b"\ndeepseek-rl: Ctrl-C: stopping after this step's checkpoint (Ctrl-C again stops at once)\n")
    if _REQUESTED[0] is None:
        _REQUESTED[0] = signum


class Preemption:
    """Remembers a SIGTERM or Ctrl-C so a loop can stop at a safe point instead of dying mid-update.

    The outermost instance installs the handlers (and clears the flag: a new run starts unpreempted); nested ones
    share them. `close()` puts the previous handlers back only where this instance installed them."""

    def __init__(self) -> None:
        self.installed = signal.getsignal(signal.SIGTERM) is not _handle
        self.previous = {s: signal.signal(s, _handle) for s in SIGNALS} if self.installed else {}
        if self.installed:
            _REQUESTED[0], _CTRL_C[0] = None, 0

    @property
    def requested(self) -> bool:
        return _REQUESTED[0] is not None

    def close(self) -> None:
        if self.installed:
            for signum, previous in self.previous.items():
                signal.signal(signum, previous)
            self.installed = False
