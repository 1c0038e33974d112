"""The errors a user can cause, each a one-line message that names the key, file or row and the fix.

They live in this leaf module (no imports) so that every layer can raise them, the torch-free rewards included,
and the command line turns them into one line on stderr and exit status 2 instead of a traceback.
"""


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the fix."""


class DataError(ValueError):
    """Bad data: the message names the file (or task), the row and the column."""


class LaunchError(RuntimeError):
    """The launcher and the process group disagree (a run that would be silently wrong)."""
