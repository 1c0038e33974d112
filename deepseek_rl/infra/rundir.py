"""The run directory: one run at a time in it, and an earlier run's files never replaced by accident.

Lock. A run holds `<output_dir>/.deepseek-rl.lock` from before anything loads until it ends: an exclusive `flock`
on the file, which records the holder's pid, host and start time. A second run in the same folder (a second
terminal, a requeued job while the first still runs) stops with one message that names them. Choices:
- The kernel drops a flock when its process dies, however it dies, so a lock file left by a run that was killed
  (SIGKILL, out of memory) holds nothing: a run on the same host takes it over and says whose it was. Where flock is
  not supported (some network filesystems) the recorded pid decides on this host: alive means in use.
- A lock file recorded by another host (shared storage) cannot be checked from here (its pid means nothing on this
  host, and flock may not cross hosts): the run stops and names the file to delete once that run is over.
- Under a multi-process launch only rank 0 takes the lock and checks the folder; the other ranks learn the outcome
  from it (`distributed.on_rank_zero`) and stop with the same message.

An earlier run's outputs. A new run (`trainer.resume=never`) in a folder that holds another run's metrics.jsonl,
checkpoints, final export, summary or finished stages (`EVIDENCE`, at the top or in a stage folder) would truncate
its metrics and leave its checkpoints beside the new export, so it stops and names the two explicit choices:
`trainer.resume=auto` continues that run; `trainer.overwrite=true` starts over there, and first removes what runs
write (`OUTPUTS`, `OUTPUT_GLOBS` and the stage folders) and nothing else: the user's own files and Hydra's `.hydra/`
stay. A resume (auto, or a checkpoint path) is itself the choice to continue, so it is never refused here.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from deepseek_rl.errors import ConfigError

LOCK_FILE = ".deepseek-rl.lock"
# Files and folders whose presence shows that a run already wrote here (in the folder or one of its stage folders).
EVIDENCE = ("metrics.jsonl", "checkpoints", "final", "summary.json", "stage.json", "results.json")
# What runs write in a run folder: removed (with the stage folders) by trainer.overwrite=true.
OUTPUTS = (
    *EVIDENCE, "results.md", "curves.png", "kept.jsonl", "rollouts", "rank_reports", "tensorboard", "wandb",
    "vllm_model",
)  # fmt: skip
OUTPUT_GLOBS = ("metrics-*.json", "samples-*.jsonl", "control_*")
STAGE_FOLDERS = ("sft", "grpo", "rft", "eval")


def host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _read_owner(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    try:
        owner = json.loads(data)
    except ValueError:
        return None
    return owner if isinstance(owner, dict) and "pid" in owner else None


def _describe(owner: dict | None) -> str:
    if owner is None:
        return "another process"
    return f"pid {owner['pid']} on host {owner.get('host', '?')}, started {owner.get('started', '?')}"


class RunLock:
    """The lock of one run folder (see the module docstring); `release()` gives it back."""

    def __init__(self, folder: Path, key: str = "trainer.output_dir"):
        self.path, self.key, self.fd = folder / LOCK_FILE, key, None
        self.taken_over: dict | None = None  # the stale lock's record, when this run took it over

    def acquire(self) -> RunLock:
        """Take the lock; ConfigError naming the holder when another run has it."""
        for _ in range(10):  # the holder may release (unlink) it between our open and our flock: open again
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                held, checked = self._flock(fd)
                owner = _read_owner(fd)
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    raise FileNotFoundError  # released and recreated meanwhile
            except FileNotFoundError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            try:
                self._check(held, checked, owner)
            except ConfigError:
                os.close(fd)
                raise
            self.fd, self.taken_over = fd, owner if owner is not None and owner.get("pid") != os.getpid() else None
            record = {"pid": os.getpid(), "host": host(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "argv": sys.argv}  # fmt: skip
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            return self
        raise ConfigError(f"{self.key}={self.path.parent}: could not take {self.path} (it keeps changing)")

    @staticmethod
    def _flock(fd: int) -> tuple[bool, bool]:
        """flock the file: (held by another process, whether flock answered at all: not on every filesystem)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return True, True
            return False, False  # ENOLCK, EOPNOTSUPP...: the recorded pid decides
        return False, True

    def _check(self, held: bool, checked: bool, owner: dict | None) -> None:
        folder = self.path.parent
        same_host = owner is not None and owner.get("host") == host()
        alive = same_host and not checked and owner["pid"] != os.getpid() and pid_alive(int(owner["pid"]))
        if held or alive:
            raise ConfigError(
                f"{self.key}={folder} is in use by another run ({_describe(owner)}); wait for it to finish, stop it, "
                f"or choose another {self.key}"
            )
        if owner is not None and not same_host:
            raise ConfigError(
                f"{self.key}={folder} is locked by a run on another host ({_describe(owner)}), which cannot be "
                f"checked from here; if that run has ended, delete {self.path}, or choose another {self.key}"
            )

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)  # closing drops the flock
        self.fd = None


def earlier_outputs(folder: Path) -> list[str]:
    """The EVIDENCE of an earlier run in `folder` or its direct subfolders, as paths relative to it."""
    found = [name for name in EVIDENCE if (folder / name).exists()]
    if folder.is_dir():
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found += [f"{sub.name}/{name}" for name in EVIDENCE if (sub / name).exists()]
    return found


def remove_outputs(folder: Path) -> list[str]:
    """Remove what runs write in `folder` (OUTPUTS, OUTPUT_GLOBS, the stage folders); returns the names removed."""
    doomed = [folder / name for name in (*OUTPUTS, *STAGE_FOLDERS)]
    doomed += [p for pattern in OUTPUT_GLOBS for p in folder.glob(pattern)]
    removed = []
    for path in doomed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(path.name)
    return sorted(removed)


def claim(folder: Path, resume: str, overwrite: bool, key: str = "trainer.output_dir") -> RunLock:
    """Lock `folder` for this run and make sure it starts where it should (see the module docstring): ConfigError
    when another run holds it, or when a new run would write over an earlier one without trainer.overwrite."""
    lock = RunLock(folder, key).acquire()
    try:
        if lock.taken_over is not None:
            gone = "is no longer running" if not pid_alive(int(lock.taken_over["pid"])) else "no longer holds it"
            say(f"took over the stale lock of {key}={folder} left by {_describe(lock.taken_over)}, which {gone}")
        if resume == "never":
            found = earlier_outputs(folder)
            if found and not overwrite:
                shown = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
                raise ConfigError(
                    f"{key}={folder} holds an earlier run ({shown}); continue it with trainer.resume=auto, start "
                    f"over there with trainer.overwrite=true (its outputs are deleted), or choose another {key}"
                )
            if found:
                say(f"trainer.overwrite: removed the earlier run's {', '.join(remove_outputs(folder))} from {folder}")
    except BaseException:
        lock.release()
        raise
    return lock


def say(message: str) -> None:
    print(f"deepseek-rl: {message}", file=sys.stderr)
