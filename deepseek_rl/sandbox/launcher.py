"""Start a code sandbox: the job its harness receives, the process that runs it, and how it is killed.

`launch` is the one way a sandbox starts (for `sandbox.execute` and for tool sessions, `session.py`): it draws the
uids of the program and the judge, makes the sandbox's memory cgroup (`cgroups.py`) or lowers the limits so that the
memory budget holds without one (`budget`), sends the judge's and the program's code compiled once per process
(`_code`), and starts `_sandbox_init.py` under `unshare` (strong) or as a plain child (weak), in a new session, with a
scrubbed environment. The job goes on the harness's stdin, which then stays open as its lifeline. See sandbox.py for
the isolation, and _sandbox_judge.py for the verdict's guarantee.
"""

from __future__ import annotations

import ast
import marshal
import math
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from deepseek_rl.sandbox import cgroups

HARNESS = Path(__file__).with_name("_sandbox_init.py")
UNSHARE = ("unshare", "--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child", "--")
# Without root: the same namespaces inside a new user namespace where this user is mapped to root.
UNSHARE_USER = ("unshare", "--user", "--map-root-user", *UNSHARE[1:])

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Unprivileged uids drawn for strong sandboxes: far above any real account, distinct per execution.
UID_RANGE = (1_000_000_000, 1_100_000_000)


class SandboxError(RuntimeError):
    """The sandbox itself could not run (not the program's fault): counted as a reward error, never as a 0."""


@dataclass(frozen=True)
class Limits:
    # Wall-clock seconds for solution, setup and tests together; CPU seconds are the same, rounded up.
    timeout: float = 8.0
    # Address space of each process, MiB.
    memory_mb: int = 1024
    # Memory of the sandbox as a whole (all its processes and its tmpfs, swap included), MiB: a cgroup where one can
    # be made (root); elsewhere processes and memory_mb are lowered so that (processes + 1) x memory_mb fits in it.
    total_memory_mb: int = 2048
    # Processes and threads of the sandbox's uid (strong mode; in weak mode on top of the user's current count).
    processes: int = 32
    # Largest file the program may write, MiB; and (strong mode) the whole writable filesystem, MiB.
    file_mb: int = 16
    disk_mb: int = 64
    open_files: int = 64
    # Bytes of the program's stdout + stderr kept for debugging; the rest is read and dropped.
    output_bytes: int = 16384


def interpreter() -> str:
    """The base interpreter, run outside any venv and without `site` (-S): the program gets the standard library
    only, not the trainer's packages, and starts in ~10 ms instead of ~40."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _binds() -> list[str]:
    prefix = os.path.realpath(sys.base_prefix)
    extra = [prefix] if not interpreter().startswith(prefix + os.sep) else [prefix, os.path.dirname(interpreter())]
    return [*SYSTEM_DIRS, *extra]


def _user_process_count() -> int:
    uid = os.getuid()
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                count += entry.stat().st_uid == uid
            except OSError:
                pass
    return count


def subject(test: str) -> str | None:
    """The name of the function whose result a test compares, `assert NAME(...) == ...`, when NAME appears nowhere
    else in it: the one place where a builtin or standard-library name may stand for the program's own function
    (MBPP 126 names its function `sum`); everywhere else the judge keeps its own (see _sandbox_judge.py).

    >>> subject("assert sum(10, 15) == 6"), subject("assert set(f(x)) == set([1])"), subject("assert f(1)")
    ('sum', None, None)
    """
    try:
        tree = ast.parse(test)
    except SyntaxError:
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        return None
    check = tree.body[0].test
    call = check.left if isinstance(check, ast.Compare) else None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
        return None
    name = call.func.id
    return name if sum(isinstance(n, ast.Name) and n.id == name for n in ast.walk(tree)) == 1 else None


_CODE: dict[str, bytes] = {}


def _code() -> dict[str, bytes]:
    """The judge's and the program's code (and their codec), compiled once per process and sent with each job: the
    sandbox's interpreters run them without importing anything of this package."""
    if not _CODE:
        for name in ("codec", "judge", "program", "setup"):
            path = HARNESS.with_name(f"_sandbox_{name}.py")
            _CODE[name] = marshal.dumps(compile(path.read_text(), f"<{name}>", "exec"))
    return _CODE


def budget(limits: Limits, cgroup: bool) -> tuple[int, int]:
    """(processes, memory_mb) for the program: as given under a memory cgroup; without one, lowered so that its
    processes and the judge, each within memory_mb, fit in total_memory_mb.

    >>> budget(Limits(), cgroup=False), budget(Limits(), cgroup=True), budget(Limits(memory_mb=256), cgroup=False)
    ((4, 409), (32, 1024), (4, 256))
    """
    if cgroup:
        return limits.processes, limits.memory_mb
    processes = min(limits.processes, cgroups.FALLBACK_PROCESSES)
    return processes, min(limits.memory_mb, limits.total_memory_mb // (processes + 1))


def _warn_budget(limits: Limits, processes: int, memory_mb: int) -> None:
    """Once per process: the sandbox's memory is bounded by fewer, smaller processes (no cgroup)."""
    if (processes, memory_mb) != (limits.processes, limits.memory_mb) and not _WARNED_BUDGET:
        _WARNED_BUDGET.append(True)
        warnings.warn(
            f"deepseek-rl code sandbox: no memory cgroup for the sandbox ({cgroups.memory_parent()[3]}): each sandbox "
            f"keeps within total_memory_mb={limits.total_memory_mb} by allowing {processes} processes (threads "
            f"count) of {memory_mb} MiB (processes={limits.processes}, memory_mb={limits.memory_mb} asked); run as "
            "root with a writable /sys/fs/cgroup to cap the sandbox as a whole instead",
            RuntimeWarning,
            stacklevel=4,
        )


_WARNED_BUDGET: list[bool] = []


def _job(
    mode: str,
    flavor: str,
    tmp: str | None,
    nonce: str,
    fd: int,
    code: tuple[str, str, list],
    limits: Limits,
    cgroup: tuple[str, str] | None,
) -> dict:
    values = asdict(limits)
    values["cpu_seconds"] = math.ceil(limits.timeout)
    values["processes"], values["memory_mb"] = budget(limits, cgroup is not None)
    if cgroup is None:
        _warn_budget(limits, values["processes"], values["memory_mb"])
    drop = os.geteuid() == 0 and (mode == "weak" or flavor == "root")  # the judge and the program take these uids
    if not drop:  # the limit counts all of this user's processes
        values["processes"] += _user_process_count()
    program_uid, judge_uid = random.SystemRandom().sample(range(*UID_RANGE), 2)
    solution, setup, tests = code
    return {
        "nonce": nonce,
        "verdict_fd": fd,
        "mode": mode,
        "flavor": flavor,
        "root": tmp or "",  # strong: the harness chooses where to mount its root, in its own mount namespace
        "workdir": os.path.join(tmp, "work") if tmp else "/work",
        "uid": program_uid,
        "judge_uid": judge_uid,
        "drop": drop,
        "binds": _binds(),
        "limits": values,
        "cgroup": cgroup,
        "solution": solution,
        "setup": setup,
        "tests": tests,
        "subjects": [subject(test) if counts else None for test, counts in tests],
        "code": _code(),
    }


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the harness's children and their process groups (weak mode: the program's), the namespace's first
    process (strong mode: the kernel then kills the whole pid namespace) and the session's group."""
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    except OSError:
        children = []
    own_group = os.getpgid(0)
    for pid in map(int, children):
        try:
            group = os.getpgid(pid)
            if group not in (own_group, proc.pid):
                os.killpg(group, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()


@dataclass
class Launched:
    """A started harness: its process, its folder on this machine (weak mode only; a strong sandbox has none), the
    nonce of its verdict lines and where they arrive. Its stdin stays open: the harness's lifeline."""

    proc: subprocess.Popen
    tmp: str | None
    nonce: str
    verdict_fd: int
    mode: str
    cgroup: str | None = None  # its memory cgroup, where there is one

    def kill(self) -> None:
        """Kill the whole sandbox and remove its files and its cgroup."""
        _kill_tree(self.proc)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        os.close(self.verdict_fd)
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if self.cgroup is not None:
            cgroups.remove(self.cgroup)


def launch(
    mode: str, flavor: str, limits: Limits, solution: str = "", setup: str = "", tests=(), command_fd: int | None = None
) -> Launched:
    """Start the harness (isolated as `mode`/`flavor` say) with its job on stdin, which then stays open: the end of
    that pipe (this process died) ends the sandbox. `command_fd`, the read end of a pipe, makes it a session (programs
    sent one after another, sandbox/session.py). SandboxError if it cannot."""
    tmp = None  # strong: the root is a tmpfs in the sandbox's own mount namespace, nothing on this machine's disk
    if mode == "weak":
        tmp = tempfile.mkdtemp(prefix="deepseek-rl-sandbox-")
        os.makedirs(os.path.join(tmp, "work"))
    nonce = secrets.token_hex(16)
    try:
        cgroup = cgroups.create(limits.total_memory_mb)
    except OSError as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise SandboxError(f"cannot make the sandbox's memory cgroup: {err}") from err
    read_fd, write_fd = os.pipe()
    job = _job(mode, flavor, tmp, nonce, write_fd, (solution, setup, list(tests)), limits, cgroup)
    job["command_fd"] = command_fd
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    home = "/work" if mode == "strong" else job["workdir"]
    env.update(HOME=home, TMPDIR="/tmp" if mode == "strong" else home)
    prefix = {"root": UNSHARE, "userns": UNSHARE_USER}.get(flavor, ()) if mode == "strong" else ()
    try:
        proc = subprocess.Popen(
            [*prefix, interpreter(), "-I", "-S", "-B", str(HARNESS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=(write_fd,) if command_fd is None else (write_fd, command_fd),
            start_new_session=True,
            env=env,
            cwd=tmp or "/",
        )
    except OSError as err:
        os.close(read_fd)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if cgroup is not None:
            cgroups.remove(cgroup[0])
        raise SandboxError(f"cannot start the sandbox: {err}") from err
    finally:
        os.close(write_fd)
    data = marshal.dumps(job)
    try:  # one frame; the harness keeps reading stdin only to see it end
        proc.stdin.write(len(data).to_bytes(4, "big") + data)
        proc.stdin.flush()
    except BrokenPipeError:
        pass
    return Launched(proc, tmp, nonce, read_fd, mode, cgroup[0] if cgroup else None)
