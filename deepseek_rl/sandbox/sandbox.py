"""Run untrusted Python against tests on this machine, with no remote service.

Each execution is a separate process tree (`_sandbox_init.py` is its first process) in a new session, with a
wall-clock timeout, in a fresh temporary directory, with a scrubbed environment, and is killed as a whole at the end.
Two levels of isolation, chosen explicitly with `reward.sandbox` (the code rewards' `sandbox` argument):

- strong: new mount, pid, network, IPC and UTS namespaces; a tmpfs root holding only /usr, the interpreter, four
  devices, /proc, /work and /tmp (capped at `disk_mb`); no network at all (only a loopback that is down). Killing
  the namespace's first process kills every process the program started, setsid() or not. Two ways to get there,
  probed once per process in this order:
  - as root with util-linux `unshare` (our machines and CI): then an unprivileged uid drawn at random per execution
    (so RLIMIT_NPROC, which root ignores, counts the sandbox alone, and no two sandboxes can signal each other);
  - without root, where the kernel allows unprivileged user namespaces (`unshare --user --map-root-user`, e.g. a
    Slurm node): the program stays the namespace's root but with every capability dropped (bounding set, permitted,
    effective, inheritable, ambient) and no_new_privs, inside a chroot (which also forbids it a nested user
    namespace). Its RLIMIT_NPROC counts all the user's processes, like weak mode's.
- weak: the same process tree and limits in a new session, without namespaces. As root, the program and the judge
  still run as unprivileged uids of their own with no capability (so the process limit holds, and they cannot
  signal or trace the trainer); the interpreter is reached through an open descriptor where it sits under a folder
  others cannot enter (/root). It cannot hide world-readable files, block the network, cap the disk beyond each
  file's size, or stop a program that escapes its process group. Without root it runs as the current user.

`reward.sandbox`: `strong` requires strong isolation (an error says why it is unavailable); `weak` runs weakly on
purpose (one warning); `auto` (the default) is strong where possible and otherwise refuses to run untrusted code,
naming `reward.sandbox=weak` as the explicit opt-in. The attack tests that need strong isolation skip without it.

Resource limits in both: CPU seconds, address space, processes, file size, open files; output kept up to a cap.

Verdicts (threat model: the program is written to pass its tests without solving its task, e.g. by an RL policy
that found a reward hack). The tests never run in the program's process: the sandbox holds two, the program (a
process forked before the harness read its job, so that the tests and the nonce were never in its memory, as the
program's uid) and the judge (another uid where the sandbox runs as root; not dumpable, so it cannot be traced or
read through /proc). The judge runs each test's own code with its own builtins and standard library, asks the
program for what the test needs of it (call `f`, read `p.x`) over two pipes that carry plain data and handles,
compares the answers itself, and alone writes `pass <i>` lines, with a nonce, to a pipe only it holds. So whatever
the program does inside its process (walk frames, scan gc, patch builtins or AssertionError, write to every file
descriptor, exit with status 0, print look-alike lines, answer True to everything, return an object equal to
everything) it chooses only its own answers, from the arguments the tests give it. What still passes without
solving: a test that asks only a yes/no question of the program (`assert is_prime(7)`), compares two of the
program's objects, or trusts a helper of the program to compute the expected value. Weak mode without root is
weaker: the program runs as the trainer's user and may trace the trainer or rewrite the interpreter's files
(see `resolve_mode`'s warning). _sandbox_judge.py gives the rules.
"""

from __future__ import annotations

import ast
import os
import selectors
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass

from deepseek_rl.errors import ConfigError
from deepseek_rl.sandbox.launcher import Limits, SandboxError, launch

MODES = ("strong", "weak", "auto")


@dataclass
class Execution:
    passed: int  # tests that ran without raising
    total: int  # tests counted
    finished: bool  # every test ran (the harness reached its end)
    timed_out: bool
    output: str  # stdout + stderr of the program, truncated to Limits.output_bytes
    seconds: float
    mode: str  # strong | weak


def split_tests(tests: str | list[str]) -> list[tuple[str, bool]]:
    """Tests as (code, counts) pieces. A list: one test per item. A string: each top-level `assert` is a test
    and the statements between them run in order (a failing one stops the rest); without any top-level assert
    the whole string is one test (e.g. `def check(f): ...` then `check(f)`).

    >>> split_tests("import math\\nassert math.pi > 3\\nassert 1 + 1 == 2")
    [('import math', False), ('assert math.pi > 3', True), ('assert 1 + 1 == 2', True)]
    >>> split_tests(["assert f(1) == 2"])
    [('assert f(1) == 2', True)]
    """
    if not isinstance(tests, str):
        return [(str(t), True) for t in tests]
    body = ast.parse(tests).body
    if not any(isinstance(node, ast.Assert) for node in body):
        return [(tests, True)]
    return [(ast.get_source_segment(tests, node), isinstance(node, ast.Assert)) for node in body]


def _read(proc: subprocess.Popen, verdict_fd: int, deadline: float, cap: int) -> tuple[bytes, bytes]:
    """Read the program's output (up to `cap` bytes) and the harness's verdict lines until both pipes close,
    the process tree is gone, or the deadline passes."""
    kept = {proc.stdout.fileno(): bytearray(), verdict_fd: bytearray()}
    selector = selectors.DefaultSelector()
    for fd in kept:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    exited_at = None
    while selector.get_map() and time.monotonic() < deadline:
        events = selector.select(timeout=0.05)
        for key, _ in events:
            chunk = os.read(key.fd, 65536)
            if not chunk:
                selector.unregister(key.fd)
            elif len(kept[key.fd]) < cap:
                kept[key.fd] += chunk[: cap - len(kept[key.fd])]
        if not events and proc.poll() is not None:
            # the harness is gone but something still holds the pipes (weak mode): give it a moment, then stop
            exited_at = exited_at or time.monotonic()
            if time.monotonic() - exited_at > 0.2:
                break
    selector.close()
    return bytes(kept[proc.stdout.fileno()]), bytes(kept[verdict_fd])


def _verdict(lines: bytes, nonce: str) -> tuple[bool, set[int], bool, bool]:
    """(`ready`: the sandbox set itself up, tests passed, `done`, `timeout`) from the lines that carry the nonce."""
    ready, passed, done, timed_out = False, set(), False, False
    for line in lines.decode("utf-8", "replace").splitlines():
        token, _, rest = line.partition(" ")
        if token != nonce:
            continue
        if rest == "ready":
            ready = True
        elif rest == "done":
            done = True
        elif rest == "timeout":
            timed_out = True
        elif rest.startswith("pass ") and rest[5:].isdigit():
            passed.add(int(rest[5:]))
    return ready, passed, done, timed_out


def resolve(mode: str, flavor: str | None = None) -> tuple[str, str]:
    """(mode, flavor) to launch with: `mode` resolved (resolve_mode), or strong through `flavor` when forced."""
    if flavor is not None:
        return "strong", flavor
    mode = resolve_mode(mode)  # raises when the mode cannot be had here
    return mode, strong_flavor()[0] if mode == "strong" else ""


def execute(
    solution: str,
    tests: str | list[str],
    setup: str = "",
    limits: Limits | None = None,
    mode: str = "auto",
    flavor: str | None = None,
) -> Execution:
    """Run `solution`, then `setup`, then each test, in a sandbox; count the tests that passed. `mode` is strong,
    weak or auto (see resolve_mode); `flavor` forces how strong isolation is obtained (root or userns).

    Raises SandboxError when the sandbox could not start, ConfigError when the mode cannot be had here, ValueError
    when `tests` do not parse.
    """
    mode, flavor = resolve(mode, flavor)
    limits = limits or Limits()
    pieces = split_tests(tests)
    start = time.monotonic()
    sandbox = launch(mode, flavor, limits, solution, setup or "", pieces)
    try:
        output, verdict = _read(sandbox.proc, sandbox.verdict_fd, start + limits.timeout + 2.0, limits.output_bytes)
    finally:
        sandbox.kill()
    ready, passed, done, timed_out = _verdict(verdict, sandbox.nonce)
    text = output.decode("utf-8", "replace")
    if not ready:
        raise SandboxError(f"the {mode} sandbox did not start: {text.strip()[-500:] or 'no output'}")
    seconds = time.monotonic() - start
    timed_out = timed_out or (not done and seconds >= limits.timeout)
    counted = [i for i, (_, counts) in enumerate(pieces) if counts]
    return Execution(len(passed & set(counted)), len(counted), done, timed_out, text, seconds, mode)


_STRONG: list[tuple[str | None, str]] = []
_WARNED: list[bool] = []


def strong_flavor() -> tuple[str | None, str]:
    """How this process gets strong isolation: "root", "userns", or None with the reason; probed once (a trivial
    program through each candidate, root's first)."""
    if _STRONG:
        return _STRONG[0]
    reasons = []
    if shutil.which("unshare") is None:
        reasons.append("util-linux `unshare` not found")
    else:
        for flavor in ("root", "userns") if os.geteuid() == 0 else ("userns",):
            try:
                probe = execute("x = 1", ["assert x == 1"], mode="strong", flavor=flavor)
                if probe.passed == 1:
                    _STRONG.append((flavor, ""))
                    return _STRONG[0]
                reasons.append(f"{flavor}: a probe program failed: {probe.output.strip()[-300:]}")
            except SandboxError as err:
                reasons.append(f"{flavor}: {err}")
        if os.geteuid() != 0:
            reasons.insert(0, "not root, and unprivileged user namespaces are not available")
    _STRONG.append((None, "; ".join(reasons)))
    return _STRONG[0]


def weak_warning() -> str:
    """What weak isolation leaves open, here (as root or not)."""
    if os.geteuid() == 0:
        return (
            "deepseek-rl code sandbox: weak isolation (reward.sandbox=weak): untrusted code runs as an unprivileged "
            "uid without capabilities, with timeouts and resource limits (processes, memory, file size), but it can "
            "read world-readable files, reach the network, see other processes, and fill world-writable folders "
            "(/tmp, /dev/shm) beyond disk_mb; a process it detaches from its process group outlives it"
        )
    return (
        "deepseek-rl code sandbox: weak isolation (reward.sandbox=weak): untrusted code runs as this user with "
        "timeouts and resource limits, but it can read and change this user's files (the interpreter's too), "
        "signal and trace this user's processes (the trainer's: so it can forge its tests' verdicts), reach the "
        "network and fill the disk; run as root or with user namespaces for strong isolation"
    )


def resolve_mode(requested: str) -> str:
    """strong or weak for `reward.sandbox` = strong | weak | auto (see the module docstring); ConfigError when
    strong isolation is required (strong) or would be (auto) and this machine cannot provide it."""
    if requested not in MODES:
        raise ConfigError(f"reward.sandbox='{requested}' is not one of {', '.join(MODES)}")
    if requested == "weak":
        if not _WARNED:
            _WARNED.append(True)
            warnings.warn(weak_warning(), RuntimeWarning, stacklevel=2)
        return "weak"
    flavor, reason = strong_flavor()
    if flavor is not None:
        return "strong"
    if requested == "strong":
        raise ConfigError(
            f"reward.sandbox=strong: strong isolation is not available here ({reason}). Run as root, or allow "
            "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 or user.max_user_namespaces > "
            "0), or set reward.sandbox=weak to run untrusted code without isolation"
        )
    raise ConfigError(
        f"reward.sandbox=auto: refusing to run untrusted code without isolation ({reason}): the weak sandbox would "
        "let it read this user's files and reach the network. Run as root or where unprivileged user namespaces are "
        "allowed, or set reward.sandbox=weak to run it weakly on purpose"
    )


def isolation() -> str:
    """strong when this machine can isolate untrusted code, else weak (no warning, no error): for tests and tools."""
    return "strong" if strong_flavor()[0] is not None else "weak"
