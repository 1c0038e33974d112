"""The first process of a code sandbox: isolate, drop privileges, run the untrusted program in a child, reap it.

`deepseek_rl.rewards.sandbox` starts this file as a script (`python -I -S -B _sandbox_init.py`), inside fresh mount,
pid, network, IPC and UTS namespaces when it runs as root ("strong" mode), or as a plain child in a new session
otherwise ("weak" mode). It reads its job as one `marshal`led dict on stdin, then closes stdin. It imports as
little as it can (marshal and _signal are built in; ctypes only in strong mode, traceback only on an error): each
execution starts a fresh interpreter, and imports were half of its ~40 ms.

Strong mode, still as (namespace) root: a size-capped tmpfs becomes the new root, with read-only binds of /usr (and
/bin, /lib, ... where they are not symlinks into /usr) and of the interpreter's prefix at its own path, the devices
null, zero, random and urandom, a new /proc (this pid namespace only), a writable /work (owned by the sandbox uid)
and /tmp. Everything else (the trainer's home, checkpoints, data, /etc) is absent. Then chroot, and:
- as real root ("root" flavor): setgroups/setgid/setuid to an unprivileged uid chosen by the caller;
- in an unprivileged user namespace ("userns" flavor; only this user's uid is mapped, to 0): every capability
  dropped (bounding set, ambient, then effective/permitted/inheritable), so the program cannot undo the chroot or
  the mounts; a chrooted process cannot create a nested user namespace either. A new /proc needs the host's
  /proc fully visible; where a container masks parts of it, the sandbox goes without /proc;
then no_new_privs, and a parent-death signal (a uid change clears it).

This process then forks: the child sets the resource limits and runs solution, setup and tests in one namespace;
this process reaps every child until the program's child exits or the wall-clock limit passes, and exits. In strong
mode it is pid 1 of the namespace, so its exit kills every process the program left behind, and the program cannot
signal it. Results go to the caller on a separate pipe, each line prefixed by a nonce that only the harness knows:
`ready` (isolation done), `pass <i>` (test i ran without raising), `done` (all tests ran). Output that the program
forges without the nonce, and exits before `done`, count for nothing.

A session (`command_fd` in the job: tool calls that keep their state, rewards/session.py) runs programs one after
another in the same namespace, each read from that pipe, reporting `end <k>` or `fail <k>` after each, until the
pipe closes; the caller enforces each call's timeout by killing the whole sandbox.
"""

from __future__ import annotations

import _signal
import _sitebuiltins
import builtins
import marshal
import os
import resource
import sys

# mount(2) flags and prctl(2) options from <sys/mount.h> and <linux/prctl.h>
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 1, 24, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# statvfs f_flag bits -> the mount flags a bind remount must keep (locked inside a user namespace)
KEPT_FLAGS = ((2, MS_NOSUID), (4, MS_NODEV), (8, MS_NOEXEC), (1024, MS_NOATIME), (2048, MS_NODIRATIME),
              (4096, MS_RELATIME))  # fmt: skip
DEVICES = ("null", "zero", "random", "urandom")

_LIBC: list = []


def _libc():
    """(ctypes, libc), imported at first use: weak mode never needs them."""
    if not _LIBC:
        import ctypes

        _LIBC.extend((ctypes, ctypes.CDLL(None, use_errno=True)))
    return _LIBC[0], _LIBC[1]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = _libc()[0].get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    ctypes, libc = _libc()
    args = [None if x is None else x.encode() for x in (source, target, fstype)]
    _check(libc.mount(*args, ctypes.c_ulong(flags), None if data is None else data.encode()), f"mount {target}")


def _bind(path: str, root: str) -> None:
    """Make `path` appear read-only at the same path under `root`."""
    target = root + path
    if os.path.islink(path):
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        os.symlink(os.readlink(path), target)
        return
    if os.path.isdir(path):
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        open(target, "w").close()
    _mount(path, target, None, MS_BIND | MS_REC)
    kept = os.statvfs(path).f_flag
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID
    for bit, flag in KEPT_FLAGS:
        flags |= flag if kept & bit else 0
    _mount(None, target, None, flags)


def drop_capabilities() -> None:
    """Every capability gone for good: the bounding set (needs CAP_SETPCAP, still held), ambient, then capset(2)
    with empty effective, permitted and inheritable sets."""
    ctypes, libc = _libc()
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # past the kernel's last capability
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # two __user_cap_data_struct {effective, permitted, inheritable}, all zero
    _check(libc.capset(header, data), "capset")


def isolate(job: dict) -> None:
    """Strong mode, as root in fresh namespaces: build the new root, enter it and become the sandbox uid."""
    root, uid = job["root"], job["uid"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, f"size={job['limits']['disk_mb']}m,mode=755")
    for path in job["binds"]:
        if os.path.lexists(path) and not os.path.lexists(root + path):
            _bind(path, root)
    os.makedirs(root + "/dev", mode=0o755, exist_ok=True)
    for name in DEVICES:
        open(f"{root}/dev/{name}", "w").close()
        _mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
    os.makedirs(root + "/proc", mode=0o555, exist_ok=True)
    userns = job["flavor"] == "userns"
    try:
        _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        if not userns:
            raise
    os.makedirs(root + "/tmp", exist_ok=True)
    os.chmod(root + "/tmp", 0o1777)
    os.makedirs(root + "/work", mode=0o700, exist_ok=True)
    if not userns:
        os.chown(root + "/work", uid, uid)
    os.chroot(root)
    os.chdir("/work")
    if userns:
        drop_capabilities()
    else:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    libc = _libc()[1]
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(libc.prctl(PR_SET_PDEATHSIG, _signal.SIGKILL, 0, 0, 0), "pdeathsig")


def set_limits(limits: dict) -> None:
    cpu = int(limits["cpu_seconds"])
    memory = limits["memory_mb"] * 2**20
    file_size = limits["file_mb"] * 2**20
    for which, value in (
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (memory, memory)),
        (resource.RLIMIT_FSIZE, (file_size, file_size)),
        (resource.RLIMIT_NOFILE, (limits["open_files"], limits["open_files"])),
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_NPROC, (limits["processes"], limits["processes"])),
    ):
        resource.setrlimit(which, value)


def _run(source: str, filename: str, namespace: dict) -> bool:
    """Execute one piece of code; False (with the traceback on stderr) when it raises anything, SystemExit too."""
    try:
        exec(compile(source, filename, "exec"), namespace)
        return True
    except BaseException:  # noqa: BLE001 - untrusted code may raise anything, exit() included
        try:
            sys.stdout.flush()  # what it printed before the error comes first
            import traceback

            traceback.print_exc(limit=-2)
        except BaseException:  # noqa: BLE001
            pass
        return False


def _program_namespace(job: dict, name: str) -> dict:
    """In the child: the resource limits (exit 3 if they cannot be set), `exit`/`quit` as `site` would add them,
    and the namespace the programs run in."""
    try:
        set_limits(job["limits"])
    except OSError as err:
        print(f"sandbox: cannot set limits: {err}", file=sys.stderr)
        os._exit(3)
    builtins.exit = builtins.quit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    return {"__name__": name, "__builtins__": builtins}


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass


def run_program(job: dict, nonce: str, fd: int) -> None:
    """The child: limits, then solution, setup and each test in one namespace; report with the nonce; exit."""
    write = os.write
    namespace = _program_namespace(job, "__solution__")
    ok = _run(job["solution"], "solution.py", namespace)
    ok = ok and (not job["setup"] or _run(job["setup"], "setup.py", namespace))
    if ok:
        for i, (test, counts) in enumerate(job["tests"]):
            passed = _run(test, f"test_{i}.py", namespace)
            if passed and counts:
                write(fd, f"{nonce} pass {i}\n".encode())
            elif not passed and not counts:
                break  # a statement the tests depend on failed: the remaining tests cannot pass
        else:
            write(fd, f"{nonce} done\n".encode())
    _flush()
    os._exit(0)


def run_session(job: dict, nonce: str, fd: int) -> None:
    """The child of a session (tool calls with state): limits, then one program after another in one namespace,
    each read from the command pipe as a 4-byte length and UTF-8 source; after each, its output is flushed and
    `end <k>` (ran) or `fail <k>` (raised) reported. Exits at the end of the pipe (the caller closed it or died)."""
    commands = job["command_fd"]
    namespace = _program_namespace(job, "__main__")

    def read(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = os.read(commands, n - len(data))
            if not chunk:
                os._exit(0)
            data += chunk
        return data

    for k in range(1 << 30):
        source = read(int.from_bytes(read(4), "big")).decode("utf-8", "replace")
        ok = _run(source, f"call_{k}.py", namespace)
        _flush()
        os.write(fd, f"{nonce} {'end' if ok else 'fail'} {k}\n".encode())


def reap(child: int, timeout: float) -> bool:
    """Reap every process until `child` exits, killing it after `timeout` seconds. True when it was killed."""
    expired = []

    def expire(signum, frame):
        expired.append(True)
        os.kill(child, _signal.SIGKILL)

    _signal.signal(_signal.SIGALRM, expire)
    _signal.setitimer(_signal.ITIMER_REAL, timeout)
    while True:
        try:
            pid, _ = os.waitpid(-1, 0)
        except ChildProcessError:
            return bool(expired)
        if pid == child:
            _signal.setitimer(_signal.ITIMER_REAL, 0)
            return bool(expired)


def main() -> None:
    job = marshal.loads(b"".join(iter(lambda: os.read(0, 1 << 20), b"")))
    os.close(0)
    os.open(os.devnull, os.O_RDONLY)
    nonce, fd = job.pop("nonce"), job["verdict_fd"]
    os.umask(0o022)
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    try:
        if job["mode"] == "strong":
            isolate(job)
        else:
            os.chdir(job["workdir"])
    except OSError as err:
        print(f"sandbox: isolation failed: {err}", file=sys.stderr)
        os._exit(3)
    os.write(fd, f"{nonce} ready\n".encode())
    child = os.fork()
    if child == 0:
        (run_program if job["command_fd"] is None else run_session)(job, nonce, fd)
    if reap(child, job["limits"]["timeout"]):
        os.write(fd, f"{nonce} timeout\n".encode())
    os._exit(0)


if __name__ == "__main__":
    main()
