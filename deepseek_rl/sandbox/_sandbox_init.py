"""The first process of a code sandbox: isolate, then start the judge and the program, wait for them, end them.

`deepseek_rl.sandbox.sandbox` starts this file as a script (`python -I -S -B _sandbox_init.py`), inside fresh mount,
pid, network, IPC and UTS namespaces when it runs as root ("strong" mode), or as a plain child in a new session
otherwise ("weak" mode). It reads its job as one `marshal`led dict on stdin (written by the trusted caller), and
keeps stdin open as a lifeline: when the caller dies (a trainer SIGKILLed, a reward worker gone with it), the pipe
ends and so does the sandbox, at once, whatever its program is doing. It imports as little as it can (marshal and
_signal are built in; ctypes for prctl; traceback only on an error): each execution starts a fresh interpreter, and
imports were half of its start-up time. What it does to the machine (mounts, capabilities, the memory cgroup) is in
_sandbox_setup.py, which the caller sends compiled with the job, with the judge's and the program's code.

Strong mode, still as (namespace) root: a size-capped tmpfs, mounted over an existing folder of this private mount
namespace (so nothing is created on the machine's disk, and nothing can be left there), becomes the new root, with
read-only binds of /usr (and /bin, /lib, ... where they are not symlinks into /usr) and of the interpreter's prefix
at its own path, the devices null, zero, random and urandom, a new /proc (this pid namespace only), a writable /work
(owned by the program's uid) and /tmp. Everything else (the trainer's home, checkpoints, data, /etc) is absent.
Then chroot, and:
- as real root ("root" flavor): this process stays root (pid 1 of the namespace, out of the program's reach); its
  children become unprivileged uids chosen by the caller, one for the program and another for the judge;
- in an unprivileged user namespace ("userns" flavor; only this user's uid is mapped, to 0): every capability
  dropped (bounding set, ambient, then effective/permitted/inheritable), so nothing can undo the chroot or the
  mounts; a chrooted process cannot create a nested user namespace either. A new /proc needs the host's /proc
  fully visible; where a container masks parts of it, the sandbox goes without /proc;
then no_new_privs, and a parent-death signal.

Then two children, never one process (see _sandbox_judge.py for the guarantee this gives):
- the program (`_sandbox_program.py`): forked first thing, before this process read its job, so that nothing of the
  job (the tests, the nonce) was ever in its memory; it gets its configuration on a pipe, sets its uid and limits,
  and runs the solution;
- the judge (`_sandbox_judge.py`): runs setup and tests, asking the program for its objects over two pipes, and alone
  writes the verdict lines, each prefixed by a nonce: `pass <i>` (test i passed), `done` (all tests ran).
This process writes `ready` once the judge and the program are set up, and only then lets the program run (so that
nothing the program does can turn into a failure of the sandbox), and `timeout`.
This process reaps every child until the judge exits (then gives the program a moment to flush its output), the
wall-clock limit passes or the lifeline ends, and exits: in strong mode it is pid 1, so its exit kills every process
left in the namespace; in weak mode it kills the program's process group (the judge is in it too), and when the
caller is gone it also removes the sandbox's folder, which the caller would otherwise remove.

A session (`command_fd` in the job: tool calls that keep their state, sandbox/session.py) has no judge: the program
runs programs one after another from that pipe, reporting `end <k>` or `fail <k>` after each, until the pipe
closes; the caller enforces each call's timeout by killing the whole sandbox.
"""

from __future__ import annotations

import _signal
import marshal
import os
import resource
import select
import sys
import time

# prctl(2) options from <linux/prctl.h>
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
_LIBC: list = []


def _libc():
    """(ctypes, libc), imported at first use (before the program's process is forked, which then has them too)."""
    if not _LIBC:
        import ctypes

        _LIBC.extend((ctypes, ctypes.CDLL(None, use_errno=True)))
    return _LIBC[0], _LIBC[1]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = _libc()[0].get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def load(code: bytes, name: str) -> dict:
    """Run code compiled by the caller (`launcher._code`) as a module; its namespace."""
    namespace = {"__name__": name}
    exec(marshal.loads(code), namespace)
    return namespace


def rlimits(limits: dict, processes: bool) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) for the program (with a process limit) or the judge (without)."""
    cpu = int(limits["cpu_seconds"])
    memory, file_size, files = limits["memory_mb"] << 20, limits["file_mb"] << 20, limits["open_files"]
    result = [
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_AS, memory, memory),
        (resource.RLIMIT_FSIZE, file_size, file_size),
        (resource.RLIMIT_NOFILE, files, files),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    if processes:
        result.append((resource.RLIMIT_NPROC, limits["processes"], limits["processes"]))
    return result


def _keep_only(fds: list[int]) -> None:
    """In a new child: /dev/null on stdin, stdout and stderr as they are, `fds` kept (inheritable), every other
    descriptor closed."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    low = 3
    for fd in sorted(set(fds)):
        os.set_inheritable(fd, True)
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 2**31 - 1)
    _signal.set_wakeup_fd(-1)
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)


def program_child(control: int, started: int) -> None:
    """The program's process, forked before this process read its job (so the tests and the nonce were never in
    its memory): wait for its configuration on `control`, enter the sandbox's root and cwd, keep only its own pipes,
    and run `_sandbox_program.main` (which drops privileges and sets limits before any untrusted code)."""
    try:
        data = _frame(control)
        if data is None:
            os._exit(0)  # the harness failed before the start
        blob = marshal.loads(data)
        config, setup = blob["config"], load(blob["setup"], "_sandbox_setup")
        if config["root"]:
            os.chroot(config["root"])
        os.chdir(config["cwd"])
        if config["drop_capabilities"]:
            setup["drop_capabilities"]()
        kept = [setup["reroute_prefix"]()] if config["reroute"] else []
        config["started"], config["go"] = started, control
        names = ("requests", "replies", "commands", "status", "started", "go")
        _keep_only(kept + [config[name] for name in names if name in config])
        codec, program = load(blob["codec"], "_sandbox_codec"), load(blob["program"], "_sandbox_program")
        del data, blob, setup
    except BaseException as err:  # noqa: BLE001
        print(f"sandbox: the program could not start: {err}", file=sys.stderr)
        os._exit(3)
    program["main"](config, codec)


def _frame(fd: int) -> bytes | None:
    """One frame (4-byte length, then that many bytes) from `fd`; None if the pipe ends first."""
    data = b""
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return None
        data += chunk
    return data[4:]


def fork_program(started: int) -> tuple[int, int]:
    """Fork the program's process now, before the job is read; (its pid, the pipe its configuration goes to, and
    whose end then lets it run). It writes a byte to `started` when its prologue is done."""
    control, control_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(control_w)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # never the job's pipe
        program_child(control, started)
    os.close(control)
    return pid, control_w


def all_started(started: int, count: int, deadline: float) -> bool:
    """Whether `count` processes (the program, and the judge) finished their set-up (uid, limits) before anything
    untrusted ran: a byte each on `started`. The end of that pipe before then means the sandbox itself failed (the
    reason is in the output), never the program, which has not run yet."""
    received = b""
    while len(received) < count:
        ready = select.select([started, 0], [], [], max(0.0, deadline - time.monotonic()))[0]
        if not ready or (0 in ready and not os.read(0, 4096)):  # the deadline, or the caller is gone
            return False
        if started in ready:
            chunk = os.read(started, count)
            if not chunk:
                return False
            received += chunk
    return True


def configure_program(job: dict, control: int, fds: dict[str, int]) -> None:
    """Send the program's process its configuration (mode, solution, uid, limits, pipes, code); closing `control`
    later lets it run the untrusted code."""
    session = job["command_fd"] is not None
    config = {
        "mode": "session" if session else "tests",
        "solution": job["solution"],
        "name": "__main__" if session else "__solution__",
        "uid": job["uid"] if job["drop"] else None,
        "rlimits": rlimits(job["limits"], processes=True),
        "nonce": job["nonce"] if session else "",
        "root": job["root"] if job["mode"] == "strong" else "",
        "cwd": "/work" if job["mode"] == "strong" else job["workdir"],
        "drop_capabilities": job["flavor"] == "userns",
        "reroute": job["drop"] and job["mode"] == "weak",
        **fds,
    }
    data = marshal.dumps({"config": config, **{k: job["code"][k] for k in ("codec", "program", "setup")}})
    view = memoryview(len(data).to_bytes(4, "big") + data)
    while view:
        view = view[os.write(control, view) :]  # the pipe stays open: its end lets the program run


def start_judge(job: dict, setup: dict, pipes: tuple[int, int, int, int], group: int) -> int:
    """Fork the judge: its own uid where this process is root, not dumpable (no ptrace, no /proc/<pid>/fd or mem
    for the program), limits; then the tests (`_sandbox_judge.judge`). Its pid."""
    pid = os.fork()
    if pid:
        return pid
    requests, replies, verdict, started = pipes
    nonce = job["nonce"]

    def report(line: str) -> None:
        os.write(verdict, f"{nonce} {line}\n".encode())

    try:  # before the program runs anything: a failure here is the sandbox's (the harness says so)
        if job["mode"] == "weak":
            os.setpgid(0, group)  # the program's group, which the harness kills at the end
        kept = [setup["reroute_prefix"]()] if job["drop"] and job["mode"] == "weak" else []
        _keep_only(kept + [requests, replies, verdict, started])
        if job["drop"]:
            os.setgroups([])
            os.setgid(job["judge_uid"])
            os.setuid(job["judge_uid"])
        libc = _libc()[1]
        _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "dumpable")
        _check(libc.prctl(PR_SET_PDEATHSIG, _signal.SIGKILL, 0, 0, 0), "pdeathsig")  # (a uid change clears it)
        for which, soft, hard in rlimits(job["limits"], processes=False):
            resource.setrlimit(which, (soft, hard))
        codec, judge = load(job["code"]["codec"], "_sandbox_codec"), load(job["code"]["judge"], "_sandbox_judge")
        channel = judge["Channel"](codec, requests, replies)
        os.write(started, b"j")
        os.close(started)
    except BaseException as err:  # noqa: BLE001
        print(f"sandbox: the judge could not start: {err}", file=sys.stderr)
        os._exit(3)
    try:
        judge["judge"](job, channel, report)
    except BaseException:  # noqa: BLE001 - a fault of the judge's own: shown, and no verdict after it
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(0)


def _reap(pid: int) -> bool:
    """Reap every child that has exited; True when `pid` is (or was already) gone."""
    gone = False
    while True:
        try:
            got, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if got == 0:
            return gone
        gone = gone or got == pid


def wait(pid: int, deadline: float, wake: int) -> str:
    """Reap children until `pid` exits ("exited"), the deadline passes ("timeout") or stdin, the caller's lifeline,
    ends ("abandoned": the trainer died). SIGCHLD wakes the wait (`wake` is the signal module's wakeup pipe)."""
    while not _reap(pid):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout"
        for fd in select.select([wake, 0], [], [], remaining)[0]:
            if not os.read(fd, 4096) and fd == 0:
                return "abandoned"
    return "exited"


def read_job() -> dict:
    """The job: one frame (4-byte length, marshal) on stdin, which stays open (see `wait`)."""
    data = _frame(0)
    if data is None:
        os._exit(3)  # the caller died before it sent the whole job
    return marshal.loads(data)


def kill_all(job: dict, group: int) -> None:
    """Kill every process of the sandbox but this one, and reap them: strong mode, all of this pid namespace;
    weak mode, the program's process group and whatever else is in the sandbox's cgroup."""
    try:
        if job["mode"] == "weak":
            os.killpg(group, _signal.SIGKILL)
        elif os.getpid() == 1:  # only ever as the namespace's first process
            os.kill(-1, _signal.SIGKILL)
    except OSError:
        pass  # nothing left to kill
    until = time.monotonic() + 1.0
    while time.monotonic() < until:
        members = []
        if job["cgroup"] and job["mode"] == "weak":
            with open(f"{job['cgroup'][0]}/cgroup.procs") as procs:
                members = [int(pid) for pid in procs.read().split() if int(pid) != os.getpid()]
            for pid in members:
                try:
                    os.kill(pid, _signal.SIGKILL)
                except OSError:
                    pass
        if _reap(-1) and not members:
            return
        time.sleep(0.005)


def main() -> None:
    _check(_libc()[1].prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")  # for every process of the sandbox
    requests, to_program = os.pipe()
    from_program, replies = os.pipe()
    started, started_w = os.pipe()
    program, control = fork_program(started_w)
    job = read_job()
    nonce, verdict = job["nonce"], job["verdict_fd"]
    setup = load(job["code"]["setup"], "_sandbox_setup")
    try:
        cgroup = setup["join_cgroup"](job, program)
    except OSError as err:
        print(f"sandbox: cannot join its memory cgroup {job['cgroup'][0]}: {err}", file=sys.stderr)
        os._exit(3)
    deadline = time.monotonic() + job["limits"]["timeout"]
    os.umask(0o022)
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    wake, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    _signal.set_wakeup_fd(wake_w)
    _signal.signal(_signal.SIGCHLD, lambda signum, frame: None)  # a handler, so that SIGCHLD reaches the pipe
    try:
        if job["mode"] == "strong":
            job["root"] = setup["sandbox_root"](job["binds"])
            setup["isolate"](job)
        else:
            os.setpgid(program, program)  # the judge and the program: one group, which this process kills at the end
            if job["drop"]:  # the program's uid owns its folder; the judge may read it
                os.chmod(job["root"], 0o711)
                os.chown(job["workdir"], job["uid"], job["uid"])
                os.chmod(job["workdir"], 0o755)
            os.chdir(job["workdir"])
    except OSError as err:
        print(f"sandbox: isolation failed: {err}", file=sys.stderr)
        os._exit(3)
    if job["command_fd"] is not None:
        main_child = program
        configure_program(job, control, {"commands": job["command_fd"], "status": verdict})
    else:  # the judge first: its set-up must not depend on what the program does
        main_child = start_judge(job, setup, (to_program, from_program, verdict, started_w), program)
        configure_program(job, control, {"requests": requests, "replies": replies})
    for fd in (requests, to_program, from_program, replies, started_w):
        os.close(fd)
    if not all_started(started, 1 if main_child == program else 2, deadline):
        kill_all(job, program)
        setup["leave_cgroup"](job, cgroup)
        os._exit(3)  # no `ready`: the caller reports the sandbox as broken, with the reason from the output
    os.write(verdict, f"{nonce} ready\n".encode())
    os.close(control)  # the program may run now
    outcome = wait(main_child, deadline, wake)
    if outcome == "timeout":
        os.write(verdict, f"{nonce} timeout\n".encode())
    elif outcome == "exited" and program != main_child:  # the program flushes its output when its requests end
        outcome = wait(program, min(deadline, time.monotonic() + 0.5), wake)
    kill_all(job, program)
    setup["leave_cgroup"](job, cgroup)
    if job["mode"] == "weak" and outcome == "abandoned":
        setup["remove_folder"](job["root"])
    os._exit(0)


if __name__ == "__main__":
    main()
