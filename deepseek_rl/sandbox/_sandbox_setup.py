"""What a sandbox's harness does to the machine: the strong sandbox's root, capabilities, the interpreter's path for
an unprivileged uid, the memory cgroup, and the weak sandbox's folder.

Part of the harness (`_sandbox_init.py`), in a module of its own for size: the caller compiles it once and sends it
with each job, as it does the judge's and the program's code, and the harness and the program's process run it
(they import nothing of this package). The harness runs as root (in its namespaces, or the machine's in weak mode)
while it uses these; every function here runs before any untrusted code, or after all of it is dead.
"""

import os
import sys
import time

# mount(2) flags and prctl(2) options from <sys/mount.h> and <linux/prctl.h>
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_CAP_AMBIENT = 1, 24, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# statvfs f_flag bits -> the mount flags a bind remount must keep (locked inside a user namespace)
KEPT_FLAGS = ((2, MS_NOSUID), (4, MS_NODEV), (8, MS_NOEXEC), (1024, MS_NOATIME), (2048, MS_NODIRATIME),
              (4096, MS_RELATIME))  # fmt: skip
DEVICES = ("null", "zero", "random", "urandom")
# folders a strong sandbox may mount its root on, in its own mount namespace (the first that holds nothing it binds)
MOUNTPOINTS = ("/mnt", "/media", "/srv", "/opt", "/boot", "/home", "/tmp")


_LIBC: list = []


def _libc():
    """(ctypes, libc): already imported by the harness."""
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
    """Strong mode, as root in fresh namespaces: build the new root and enter it (this process stays the
    namespace's root; its children drop to unprivileged uids)."""
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
    os.makedirs(root + "/work", mode=0o755, exist_ok=True)  # the judge reads what the program writes there
    if not userns:
        os.chown(root + "/work", uid, uid)
    os.chroot(root)
    os.chdir("/work")
    if userns:
        drop_capabilities()
    libc = _libc()[1]
    _check(libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0), "pdeathsig")


def sandbox_root(binds: list[str]) -> str:
    """Where this mount namespace mounts the sandbox's root: an existing folder that holds nothing to bind (it is
    covered here only; nothing is created on the machine's disk)."""
    for path in MOUNTPOINTS:
        inside = any(b == path or b.startswith(path + "/") for b in binds)
        if os.path.isdir(path) and not os.path.islink(path) and not inside:
            return path
    raise OSError(f"no folder to mount the sandbox's root on (tried {', '.join(MOUNTPOINTS)})")


def join_cgroup(job: dict, program: int) -> tuple[int, int, str] | None:
    """Move this process and the program's into the sandbox's memory cgroup (the judge, forked later, follows);
    what `leave_cgroup` needs, opened now (a strong sandbox's chroot hides /sys)."""
    if not job["cgroup"]:
        return None
    path, home = job["cgroup"]
    for pid in (os.getpid(), program):
        fd = os.open(f"{path}/cgroup.procs", os.O_WRONLY)
        try:
            os.write(fd, str(pid).encode())
        finally:
            os.close(fd)
    parent = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    return os.open(f"{home}/cgroup.procs", os.O_WRONLY), parent, os.path.basename(path)


def leave_cgroup(job: dict, cgroup: tuple[int, int, str] | None) -> None:
    """With every other process of the sandbox dead: return to the caller's cgroup and remove the sandbox's."""
    if cgroup is not None:
        home, parent, name = cgroup
        try:
            os.write(home, b"0")
            os.rmdir(name, dir_fd=parent)
        except OSError:
            pass  # the caller removes it


def reroute_prefix() -> int:
    """Weak mode as root: the interpreter's prefix may sit under a folder other users cannot enter (pyenv in /root,
    mode 700). Open it while still root and import through `/proc/self/fd/<fd>`, which needs no search permission
    on the folders above it (below it, permissions apply as usual). Returns the descriptor, to be kept."""
    fd = os.open(os.path.realpath(sys.prefix), os.O_RDONLY | os.O_DIRECTORY)
    for prefix in {sys.prefix, os.path.realpath(sys.prefix)}:
        sys.path[:] = [f"/proc/self/fd/{fd}{p[len(prefix) :]}" if p == prefix or p.startswith(prefix + "/") else p
                       for p in sys.path]  # fmt: skip
    sys.path_importer_cache.clear()
    return fd


def remove_folder(path: str) -> None:
    """Weak mode, when the caller is gone (it removes the folder otherwise): remove the sandbox's folder, once its
    processes are dead, folders the program made unreadable (mode 000) included."""
    import shutil

    def unlock(func, target, exc_info):
        try:
            os.chmod(os.path.dirname(target), 0o700)
            os.chmod(target, 0o700)
            func(target)
        except OSError:
            pass

    for _ in range(3):
        shutil.rmtree(path, onerror=unlock)
        if not os.path.exists(path):
            return
        time.sleep(0.05)  # a process still writing when it was killed
