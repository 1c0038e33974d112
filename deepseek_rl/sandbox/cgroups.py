"""A memory cgroup for each sandbox, where one can be made: the budget of a sandbox as a whole.

`Limits.memory_mb` caps each process's address space, and `processes` their number, so without more one sandbox
could hold processes x memory_mb (32 GiB by default) and the kernel's OOM killer could take the trainer. As root, each
sandbox therefore gets a cgroup of its own, capped at `Limits.total_memory_mb` (swap included): its harness moves
itself and the program's process into it before anything runs, so the judge, the program, everything it starts and
the pages of its tmpfs are counted together, and the OOM killer acts inside it (on the program's processes first:
they raise their OOM score), never outside.

Where it goes: cgroup v2 when the memory controller is available to this process's cgroup (as children of it where
its subtree has the controller, else as siblings), else cgroup v1's memory hierarchy (as children of this process's
memory cgroup). Not as root, or with a read-only /sys/fs/cgroup or no memory controller, there is none, and
`launcher.budget` keeps a bound it can prove instead: at most `FALLBACK_PROCESSES` processes of
`total_memory_mb / (FALLBACK_PROCESSES + 1)` MiB each (one more for the judge), and says so once. The choice is
probed once per process (a cgroup made and removed).

Names are `deepseek-rl-sandbox-<pid of the creator>-<random>`. The harness removes its cgroup when it ends; the
caller removes it too, and a creator that died (SIGKILL) leaves cgroups that the next creator under the same parent
removes.
"""

from __future__ import annotations

import os
import secrets
import signal
import time

PREFIX = "deepseek-rl-sandbox-"
FALLBACK_PROCESSES = 4

_FOUND: list[tuple[str | None, int, str, str]] = []  # (parent of sandbox cgroups, version, home, why none)


def _own_cgroups() -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    paths = {}
    with open("/proc/self/cgroup") as lines:
        for line in lines:
            hierarchy, controllers, path = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if hierarchy != "0" else [""]:
                paths[name] = path
    return paths


def _mounts() -> dict[str, tuple[str, str]]:
    """The cgroup2 mount, and each v1 controller's: name -> (mount point, the mount's root in the hierarchy)."""
    found = {}
    with open("/proc/self/mountinfo") as lines:
        for line in lines:
            left, _, right = line.partition(" - ")
            fields, (fstype, _source, options) = left.split(), right.split()[:3]
            if fstype == "cgroup2":
                found.setdefault("cgroup2", (fields[4], fields[3]))
            elif fstype == "cgroup":
                for option in options.split(","):
                    found.setdefault(option, (fields[4], fields[3]))
    return found


def _directory(mount: tuple[str, str], path: str) -> str | None:
    point, root = mount
    if root != "/" and not (path == root or path.startswith(root + "/")):
        return None  # this process's cgroup is outside what the mount shows
    relative = path[len(root) :] if root != "/" else path
    return point.rstrip("/") + "/" + relative.strip("/") if relative.strip("/") else point


def _read(path: str) -> str:
    with open(path) as file:
        return file.read()


def _write(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)


def _candidates() -> list[tuple[str, int, str]]:
    """(parent for sandbox cgroups, version, this process's cgroup) in order of preference."""
    own, mounts = _own_cgroups(), _mounts()
    result = []
    if "cgroup2" in mounts and "" in own:
        home = _directory(mounts["cgroup2"], own[""])
        if home and os.path.isdir(home):
            if "memory" in _read(f"{home}/cgroup.subtree_control").split():
                result.append((home, 2, home))
            elif os.path.exists(f"{home}/memory.max") and home.rstrip("/") != mounts["cgroup2"][0].rstrip("/"):
                result.append((os.path.dirname(home), 2, home))  # siblings: the parent gives children memory
    if "memory" in mounts and "memory" in own:
        home = _directory(mounts["memory"], own["memory"])
        if home and os.path.isdir(home):
            result.append((home, 1, home))
    return result


def memory_parent() -> tuple[str | None, int, str, str]:
    """(where sandbox cgroups go, cgroup version, this process's own cgroup, "") or (None, 0, "", why none);
    probed once per process by making and removing one."""
    if _FOUND:
        return _FOUND[0]
    reasons = []
    if os.geteuid() != 0:
        reasons.append("not root")
    else:
        try:
            for parent, version, home in _candidates():
                try:
                    remove(_make(parent, version, 64))
                    _FOUND.append((parent, version, home, ""))
                    return _FOUND[0]
                except OSError as err:
                    reasons.append(f"cgroup v{version} at {parent}: {err.strerror or err}")
        except (OSError, ValueError) as err:
            reasons.append(f"cannot read this process's cgroups: {err}")
        reasons = reasons or ["no cgroup memory controller here"]
    _FOUND.append((None, 0, "", "; ".join(reasons)))
    return _FOUND[0]


def _make(parent: str, version: int, limit_mb: int) -> str:
    path = f"{parent}/{PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    os.mkdir(path)
    try:
        limit = str(limit_mb << 20)
        if version == 2:
            _write(f"{path}/memory.max", limit)
            if os.path.exists(f"{path}/memory.swap.max"):
                _write(f"{path}/memory.swap.max", "0")
        else:
            _write(f"{path}/memory.limit_in_bytes", limit)
            try:
                _write(f"{path}/memory.memsw.limit_in_bytes", limit)  # swap counted (absent without swap accounting)
            except OSError:
                pass
    except OSError:
        os.rmdir(path)
        raise
    return path


def create(limit_mb: int) -> tuple[str, str] | None:
    """A new sandbox cgroup capped at `limit_mb`: (its path, the cgroup its harness returns to at the end), or None
    where cgroups are unavailable (see memory_parent). Stale ones of dead creators under the same parent go first."""
    parent, version, home, _ = memory_parent()
    if parent is None:
        return None
    _sweep(parent)
    return _make(parent, version, limit_mb), home


def _sweep(parent: str) -> None:
    try:
        names = [n for n in os.listdir(parent) if n.startswith(PREFIX)]
    except OSError:
        return
    for name in names:
        creator = name[len(PREFIX) :].split("-", 1)[0]
        if creator.isdigit() and not os.path.exists(f"/proc/{creator}"):
            remove(f"{parent}/{name}", wait=0.0)


def remove(path: str, wait: float = 1.0) -> None:
    """Kill what is left in the cgroup and remove it (retrying up to `wait` seconds while its processes exit)."""
    until = time.monotonic() + wait
    while True:
        try:
            for pid in _read(f"{path}/cgroup.procs").split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() >= until:
                return
            time.sleep(0.01)
