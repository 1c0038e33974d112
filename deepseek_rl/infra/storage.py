"""The run directory's storage: writable before anything loads, and a full disk reported as such.

- `check_writable` runs before any model or data loads: it creates the output directory and writes (then removes)
  a probe file there, so `/proc/...`, a read-only mount or a path under a file stop the run in a second with one
  message instead of a traceback after the model has loaded.
- `is_disk_full` recognises a write that failed for want of space. torch reports it as "unexpected pos 576 vs
  534" or "file write failed", safetensors as "os error 28", Python as ENOSPC; so besides the errno and those
  texts, the free space left on the filesystem decides (under `NEARLY_FULL` right after the failed write).
  `infra/checkpoint.py` turns it into a StorageError that names what is intact.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from deepseek_rl.errors import ConfigError

# Free bytes under which a failed write is put down to a full disk.
NEARLY_FULL = 16 * 2**20
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
FULL_TEXTS = ("no space left", "os error 28", "disk quota exceeded", "os error 122")


def check_writable(path: Path, key: str) -> None:
    """Create `path` and write a file in it; ConfigError naming `key` and the reason when that is impossible."""
    probe = path / f".write-test-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or str(err)
        if isinstance(err, NotADirectoryError) or err.errno == errno.ENOTDIR:
            reason = "a part of the path is a file, not a directory"
        raise ConfigError(
            f"{key}={path} is not writable ({reason}); choose a directory you can write to, e.g. {key}=runs/<name>"
        ) from None


def free_bytes(path: Path) -> int | None:
    """Bytes this process may still write on the filesystem holding `path` (its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    blocks = stats.f_bfree if os.geteuid() == 0 else stats.f_bavail  # root may use the reserved blocks
    return blocks * stats.f_frsize


def is_disk_full(err: BaseException, path: Path, writing: bool = False) -> bool:
    """Did `err` come from a full disk (or quota)? By its errno or text anywhere in its chain; and, when it was
    raised by a write under `path` (`writing`), also by the free space left there."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in FULL_ERRNOS:
            return True
        if any(text in str(seen).lower() for text in FULL_TEXTS):
            return True
        seen = seen.__cause__ or seen.__context__
    if not writing:
        return False
    free = free_bytes(path)
    return free is not None and free < NEARLY_FULL and isinstance(err, OSError | RuntimeError)
