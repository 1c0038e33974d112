"""The errors a user can cause or suffer, each a one-line message that names the key, file or row and the fix.

They live in this leaf module (no project imports) so that every layer can raise them, the torch-free rewards included,
and the command line turns them into one line on stderr and an exit status instead of a traceback:

    ConfigError, DataError, LaunchError   "configuration error: ..."   exit 2
    CheckpointError                       "checkpoint error: ..."      exit 2   (no intact checkpoint; a resume
                                                                                  whose config changed the run)
    StorageError                          "storage error: ..."         exit 74  (the disk filled up; says what is
                                                                                  intact)
    RewardError                           "reward error: ..."          exit 2   (a reward failed on most samples
                                                                                  for several steps)
    NumericalError                        "numerical error: ..."       exit 2   (a non-finite loss or gradient
                                                                                  norm: the weights were not touched)
"""

import difflib


def did_you_mean(value: str, choices) -> str:
    """' Did you mean 'X'?' with the closest of `choices` to `value`, or '' when none is close."""
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


class UserError(Exception):
    """Base of the errors above: `kind` and `exit_status` are what the command line prints and returns."""

    kind = "error"
    exit_status = 2


class ConfigError(UserError, ValueError):
    """A configuration value that cannot work; the message names the key and the fix."""

    kind = "configuration error"


class DataError(UserError, ValueError):
    """Bad data: the message names the file (or task), the 1-based line or row, and the column."""

    kind = "configuration error"


class LaunchError(UserError, RuntimeError):
    """The launcher and the process group disagree (a run that would be silently wrong)."""

    kind = "configuration error"


class CheckpointError(UserError, RuntimeError):
    """No intact checkpoint to resume from, or a resume whose config differs from the checkpoint's."""

    kind = "checkpoint error"


class StorageError(UserError, OSError):
    """A write failed for want of space (or quota); the message names what is intact and how to continue."""

    kind = "storage error"
    exit_status = 74  # EX_IOERR


class RewardError(UserError, RuntimeError):
    """A reward failed (raised, timed out, returned a non-finite score) on more than `reward.max_error_rate` of a
    step's samples for `reward.max_error_steps` steps in a row: training on its failure scores would be garbage."""

    kind = "reward error"


class NumericalError(UserError, ArithmeticError):
    """A non-finite loss or gradient norm: the update stopped before it touched the weights; the message names the
    step, the micro-batch and the term."""

    kind = "numerical error"
