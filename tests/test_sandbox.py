"""The code sandbox under attack: each test runs a hostile solution through the `code` reward (a real sandbox
process), asserts that it scores 0, and checks that the trainer process and its machine are unharmed.

A hostile solution is written so that its tests pass only if the attack worked (it read the secret, reached the
server, killed the victim...), so a 0 means the attack failed, not merely that the program crashed. The attacks that
need namespaces and an unprivileged uid run in strong mode (root with `unshare`: our machines and CI, where they
must run); elsewhere they skip with the reason. The weak mode's own guarantees are tested everywhere.
"""

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest

from deepseek_rl.errors import ConfigError
from deepseek_rl.rewards.coding import CodeTimeout, code
from deepseek_rl.sandbox import cgroups, launcher, sandbox
from deepseek_rl.sandbox.session import SandboxSession

TIMEOUT = 2.0


@pytest.fixture(scope="module")
def strong():
    if sandbox.isolation() != "strong":
        reason = f"strong sandbox unavailable ({sandbox.strong_flavor()[1]})"
        if os.environ.get("CI"):
            pytest.fail(reason + " - CI runs as root and must run the attack tests")
        pytest.skip(reason)


def attack(solution: str, tests: list[str] | str = "assert True", timeout: float = TIMEOUT) -> tuple[float, float]:
    """(score, seconds) of a hostile solution through the real `code` reward (a timeout raises CodeTimeout, which
    carries the score with partial credit)."""
    start = time.monotonic()
    try:
        [score] = code([f"```python\n{solution}\n```"], tests=[tests], timeout=timeout)
    except CodeTimeout as err:
        [score] = err.scores
    return score, time.monotonic() - start


def sandbox_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("deepseek-rl-sandbox-*")}


def test_busy_loop_and_sleep_cannot_hang_the_trainer(strong):
    for solution in ("while True:\n    pass", "import time\ntime.sleep(600)"):
        start = time.monotonic()
        with pytest.raises(CodeTimeout, match=f"ran past its {TIMEOUT:g} s limit"):  # a timeout, not wrong code
            code([f"```python\n{solution}\n```"], tests=["assert True"], timeout=TIMEOUT)
        assert time.monotonic() - start < TIMEOUT + 2.0


def test_a_test_that_never_returns_still_counts_the_ones_before(strong):
    tests = ["assert True", "assert True", "while True: pass"]
    with pytest.raises(CodeTimeout, match="passed 2 of 3 tests") as raised:
        code(["```python\nx = 1\n```"], tests=[tests], timeout=TIMEOUT)
    assert raised.value.scores == [pytest.approx(2 / 3)]


def test_fork_bomb_is_contained(strong):
    score, seconds = attack("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    assert score == 0.0 and seconds < TIMEOUT + 3.0
    assert subprocess.run(["true"], timeout=10).returncode == 0  # the trainer can still start processes


def test_memory_exhaustion_is_contained(strong):
    score, _ = attack("blocks = []\nwhile True:\n    blocks.append(bytearray(64 * 2**20))", "assert len(blocks) > 1000")
    assert score == 0.0
    score, _ = attack("big = bytearray(16 * 2**30)", "assert len(big) > 0")
    assert score == 0.0


HOG = """
import os, time
r, w = os.pipe()
children = []
for i in range(8):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        try:
            block = bytearray(b'x') * (64 << 20)  # 64 MiB, every page written
            os.write(w, bytes([i]))
            time.sleep(30)
        finally:
            os._exit(0)
    children.append(pid)
os.close(w)
time.sleep(1.5)
os.set_blocking(r, False)
held = set(os.read(r, 64))
alive = [i for i, pid in enumerate(children) if os.waitpid(pid, os.WNOHANG) == (0, 0)]
print(f"forked {len(children)} holding {len([i for i in alive if i in held])}")
"""


@pytest.mark.parametrize("mode", ["strong", "weak"])
@pytest.mark.parametrize("cgroup", [True, False], ids=["cgroup", "no-cgroup"])
def test_a_sandbox_cannot_exceed_its_total_memory(mode, cgroup, monkeypatch):
    """Eight children of 64 MiB each (512 MiB) against a 384 MiB budget (256 MiB per process): those holding their
    memory at once never exceed the budget, with a cgroup (the OOM killer acts inside it) or without (the process
    and per-process limits are lowered so that they fit), and the trainer is unharmed."""
    if mode == "strong" and sandbox.isolation() != "strong":
        pytest.skip("strong sandbox unavailable")
    if cgroup and cgroups.memory_parent()[0] is None:
        pytest.skip(f"no memory cgroup can be made here ({cgroups.memory_parent()[3]})")
    if not cgroup:
        monkeypatch.setattr(cgroups, "_FOUND", [(None, 0, "", "disabled by the test")])
        monkeypatch.setattr(launcher, "_WARNED_BUDGET", [])
    limits = sandbox.Limits(timeout=6.0, memory_mb=256, total_memory_mb=384)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = sandbox.execute(HOG, "assert True", limits=limits, mode=mode)
    forked, holding = map(int, re.search(r"forked (\d+) holding (\d+)", result.output).groups())
    assert holding * 64 <= 384, result.output[-1000:]
    if cgroup:
        assert forked == 8 and holding < 8  # every child started; the budget, not a process limit, stopped some
    else:
        assert any("keeps within total_memory_mb=384 by allowing 4 processes" in str(w.message) for w in caught)
    assert subprocess.run(["true"], timeout=10).returncode == 0
    assert _sandbox_cgroups(os.getpid()) == []  # each sandbox's cgroup went with it


def test_disk_filling_is_contained(strong):
    before = sandbox_dirs()
    one_file = "f = open('big', 'wb')\nwhile True:\n    f.write(b'x' * 2**20)"
    many_files = "i = 0\nwhile True:\n    open(f'/tmp/f{i}', 'wb').write(b'x' * 2**20)\n    i += 1"
    for solution in (one_file, many_files):
        score, _ = attack(solution)
        assert score == 0.0
    assert sandbox_dirs() == before  # nothing left on the trainer's disk


def test_network_is_unreachable(strong):
    server = socket.create_server(("127.0.0.1", 0))  # the kernel queues connections even before accept()
    port = server.getsockname()[1]
    solution = f"import socket\nsock = socket.create_connection(('127.0.0.1', {port}), timeout=1)\nsock.sendall(b'hi')"
    score, _ = attack(solution, "assert sock is not None")
    reached, _, _ = select.select([server], [], [], 0.2)
    server.close()
    assert score == 0.0 and reached == []


def test_trainer_files_and_secrets_are_out_of_reach(strong, tmp_path, monkeypatch):
    secret = "hunter2-" + os.urandom(4).hex()
    checkpoint = tmp_path / "checkpoint.safetensors"
    checkpoint.write_text(secret)
    checkpoint.chmod(0o644)  # world-readable, like the checkpoints a trainer writes
    monkeypatch.setenv("DEEPSEEK_RL_TEST_SECRET", secret)
    stolen = [
        f"stolen = open({str(checkpoint)!r}).read()",
        "import os\nstolen = os.environ.get('DEEPSEEK_RL_TEST_SECRET', '')",
        f"stolen = open('/proc/{os.getpid()}/environ').read()",
        "stolen = open('/etc/passwd').read() + open('/root/.bash_history').read()",
    ]
    for solution in stolen:
        score, _ = attack(solution, [f"assert {secret!r} in stolen or 'root:' in stolen"])
        assert score == 0.0, solution
    execution = sandbox.execute(stolen[0] + "\nprint(stolen)", "assert True")
    assert secret not in execution.output


def test_cannot_kill_the_trainer_or_other_processes(strong):
    victim = subprocess.Popen(["sleep", "60"])
    try:
        solution = (
            "import os, signal\n"
            f"for target in ({victim.pid}, {os.getpid()}, os.getppid()):\n"
            "    try:\n        os.kill(target, signal.SIGKILL)\n    except OSError:\n        pass\n"
            "for pgid in (0, -1):\n"
            "    try:\n        os.killpg(pgid, signal.SIGKILL) if pgid else os.kill(-1, signal.SIGKILL)\n"
            "    except OSError:\n        pass\n"
        )
        score, _ = attack(solution, f"import os\nos.kill({victim.pid}, 0)\nassert False, 'the victim is alive'")
        assert score == 0.0
        assert victim.poll() is None  # the victim survived, and so did this process
    finally:
        victim.kill()
        victim.wait()


def test_no_process_is_left_behind(strong):
    marker = f"{time.time() % 1000:.6f}"  # an argument no other process has
    solution = (
        "import os\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv('/bin/sleep', ['sleep', '{marker}'])\n"
        "    os._exit(0)\n"
    )
    score, _ = attack(solution)
    assert score == 1.0  # the program itself is fine; what matters is what it left
    time.sleep(0.2)
    assert _processes_with(marker) == []


TRAINER = """
import os, sys
from deepseek_rl.sandbox import cgroups, launcher, sandbox
from deepseek_rl.sandbox.session import SandboxSession
kind, mode, marker = sys.argv[1], sys.argv[2], os.environ["MARKER"]
program = f"import os, time\\nif os.fork() == 0:\\n    os.execv('/bin/sleep', ['sleep', '{marker}'])\\ntime.sleep(600)"
if kind == "session":
    SandboxSession(mode).run(program, 600.0)
else:
    sandbox.execute(program, ["assert True"], limits=sandbox.Limits(timeout=600.0), mode=mode)
"""


@pytest.mark.parametrize("kind", ["code", "session"])
@pytest.mark.parametrize("mode", ["strong", "weak"])
def test_a_killed_trainer_leaves_no_sandbox_behind(kind, mode):
    """A trainer-like process runs a sandbox that would live 10 minutes (a code reward, or a tool session's call);
    SIGKILL it: every process of the sandbox is gone within seconds, and no folder is left in the temp dir."""
    if mode == "strong" and sandbox.isolation() != "strong":
        pytest.skip("strong sandbox unavailable")
    before = sandbox_dirs()
    marker = f"{600 + time.time() % 300:.6f}"  # the program's child sleeps this long: an argument no other has
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "PYTHONWARNINGS": "ignore"}
    env["MARKER"] = marker  # not on the trainer's command line
    trainer = subprocess.Popen([sys.executable, "-c", TRAINER, kind, mode], env=env, start_new_session=True)
    sandbox_pids: set[int] = set()
    try:
        started = time.monotonic()
        while not _processes_with(marker) and time.monotonic() - started < 20:
            time.sleep(0.05)
        assert _processes_with(marker), "the sandbox did not start"
        sandbox_pids = _descendants(trainer.pid)
        trainer.kill()
        trainer.wait()
        killed = time.monotonic()
        while any(map(_alive, sandbox_pids)) and time.monotonic() - killed < 5:
            time.sleep(0.02)
        left = [pid for pid in sandbox_pids if _alive(pid)]
        assert not left, f"{len(left)} of the sandbox's processes outlived the trainer by 5 s"
        print(f"{kind}/{mode}: the sandbox died {time.monotonic() - killed:.2f} s after its trainer")
        assert sandbox_dirs() == before
        assert _sandbox_cgroups(trainer.pid) == []
    finally:
        for pid in sandbox_pids | set(_processes_with(marker)):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _sandbox_cgroups(creator: int) -> list[str]:
    parent = cgroups.memory_parent()[0]
    return [] if parent is None else [n for n in os.listdir(parent) if n.startswith(f"{cgroups.PREFIX}{creator}-")]


def _descendants(root: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _processes_with(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("mode", ["weak", "auto"])
@pytest.mark.parametrize(
    "solution",
    [
        "exit(0)",
        "import sys\nsys.exit(0)",
        "import os\nos._exit(0)",
        "raise SystemExit",
        "print('pass 0')\nprint('done')",  # forged results without the nonce
        "import os\nos.write(1, b'ready\\npass 0\\ndone\\n')",
    ],
)
def test_exiting_or_forging_results_passes_nothing(solution, mode):
    execution = sandbox.execute(solution, ["assert False"], limits=sandbox.Limits(timeout=TIMEOUT), mode=mode)
    assert execution.passed == 0


@pytest.mark.parametrize("mode", ["strong", "weak"])
def test_a_sandbox_that_cannot_set_itself_up_is_an_error_not_a_zero(mode):
    """A limit the kernel refuses (more open files than fs.nr_open) breaks the program's and the judge's set-up,
    before any untrusted code runs: the caller gets SandboxError with the reason, never a silent score of 0 (and
    no program can cause this: it runs only after the set-up succeeded)."""
    if mode == "strong" and sandbox.isolation() != "strong":
        pytest.skip("strong sandbox unavailable")
    limits = sandbox.Limits(timeout=3.0, open_files=2**30)
    with pytest.raises(sandbox.SandboxError, match=f"the {mode} sandbox did not start: .*(limits|judge)"):
        sandbox.execute("x = 1", ["assert x == 1"], limits=limits, mode=mode)
    with pytest.raises(sandbox.SandboxError, match="did not start"):
        SandboxSession(mode, limits).run("print(1)", 3.0)


def test_weak_mode_keeps_timeouts_and_limits():
    limits = sandbox.Limits(timeout=1.0, memory_mb=256)
    slow = sandbox.execute("import time\ntime.sleep(30)", "assert True", limits=limits, mode="weak")
    assert slow.timed_out and slow.passed == 0 and slow.seconds < 4.0
    hungry = sandbox.execute("x = bytearray(2 * 2**30)", "assert True", limits=limits, mode="weak")
    assert hungry.passed == 0 and "MemoryError" in hungry.output
    ok = sandbox.execute("def f():\n    return 1", ["assert f() == 1", "assert f() == 2"], limits=limits, mode="weak")
    assert (ok.passed, ok.total, ok.finished, ok.mode) == (1, 2, True, "weak")


WEAK_AS_ROOT = """
import os, signal, time
uid = os.getuid()
caps = [line.split()[1] for line in open('/proc/self/status') if line.startswith('CapEff')][0]
signals = []
for target, signum in (({victim}, signal.SIGKILL), (os.getppid(), 0), ({trainer}, 0)):
    try:
        os.kill(target, signum)
        signals.append('sent')
    except OSError as err:
        signals.append(type(err).__name__)
forks = 0
for _ in range(100):
    try:
        if os.fork() == 0:
            time.sleep(3)
            os._exit(0)
        forks += 1
    except OSError:
        break
try:
    open('big', 'wb').write(b'x' * (2 * 2**20))
    write = 'written'
except OSError as err:
    write = type(err).__name__
"""


def test_weak_mode_as_root_drops_privileges_and_keeps_limits():
    """With reward.sandbox=weak and a root trainer, the program is not root, holds no capability, cannot signal the
    trainer, its harness or another root process, and the process and file-size limits hold."""
    if os.geteuid() != 0:
        pytest.skip("weak mode drops to an unprivileged uid only when the trainer is root")
    victim = subprocess.Popen(["sleep", "60"])
    try:
        solution = WEAK_AS_ROOT.format(victim=victim.pid, trainer=os.getpid())
        tests = "assert uid != 0\nassert caps == '0' * 16\nassert signals == ['PermissionError'] * 3\n"
        tests += "assert forks < 8\nassert write == 'OSError'"
        limits = sandbox.Limits(timeout=5.0, processes=8, file_mb=1)
        result = sandbox.execute(solution, tests, limits=limits, mode="weak")
        assert (result.passed, result.total) == (5, 5), result.output[-2000:]
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()
    with pytest.warns(RuntimeWarning, match="runs as an unprivileged uid without capabilities.*reach the network"):
        warnings.warn(sandbox.weak_warning(), RuntimeWarning, stacklevel=1)


def test_output_is_capped():
    limits = sandbox.Limits(timeout=5.0, output_bytes=1000)
    execution = sandbox.execute("for _ in range(100000):\n    print('spam' * 20)", "assert True", limits=limits)
    assert execution.passed == 1 and len(execution.output) <= 1000


def test_a_nested_user_namespace_cannot_undo_the_isolation(strong):
    """A program that makes itself root again in a new user namespace could chroot out of the sandbox's root;
    the kernel refuses a user namespace to a chrooted process, and the harness drops its capabilities."""
    solution = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nresult = libc.unshare(0x10000000)"
    score, _ = attack(solution, "assert result == 0, 'a nested user namespace'")
    assert score == 0.0
    execution = sandbox.execute(
        "caps = open('/proc/self/status').read()", "assert 'CapEff:\\t0000000000000000' in caps"
    )
    assert execution.passed == 1  # no capability left in the sandbox


def test_the_mode_is_explicit(monkeypatch):
    monkeypatch.setattr(sandbox, "_STRONG", [(None, "no namespaces here (test)")])
    with pytest.raises(ConfigError, match=r"reward.sandbox=auto: refusing .* set reward.sandbox=weak"):
        sandbox.resolve_mode("auto")
    with pytest.raises(ConfigError, match=r"reward.sandbox=strong: strong isolation is not available here"):
        code(["```python\nx = 1\n```"], tests=["assert x == 1"], sandbox="strong")
    assert sandbox.resolve_mode("weak") == "weak"
    assert code(["```python\nx = 1\n```"], tests=["assert x == 1"], sandbox="weak") == [1.0]
    with pytest.raises(ConfigError, match="reward.sandbox='tight' is not one of strong, weak, auto"):
        sandbox.resolve_mode("tight")


AS_NOBODY = """
set -e
mount --make-rprivate /
top=$1; prefix=$2; shift 2
mkdir -p /tmp/.deepseek-rl-pyhold && mount --bind "$prefix" /tmp/.deepseek-rl-pyhold
mount -t tmpfs -o mode=755 tmpfs "$top"
mkdir -p "$prefix" && mount --bind /tmp/.deepseek-rl-pyhold "$prefix"
exec setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"
"""

NOBODY_PROBE = """
import json, sys, warnings
from deepseek_rl.errors import ConfigError
from deepseek_rl.sandbox import sandbox
from deepseek_rl.rewards.coding import code
warnings.simplefilter("ignore")
secret, port = sys.argv[1], int(sys.argv[2])
def score(solution, tests, mode="auto"):
    return code(["```python\\n" + solution + "\\n```"], tests=[tests], timeout=3.0, sandbox=mode)[0]
forge = "import gc\\ntable = {2: 3}\\nfor o in gc.get_objects():\\n    if isinstance(o, dict) and 'tests' in o:\\n"
forge += "        table = {1: 7}\\ndef f(x):\\n    return table.get(x)"
print(json.dumps({
    "flavor": sandbox.strong_flavor()[0],
    "read": score(f"stolen = open({secret!r}).read()", ["assert 'hunter2' in stolen"]),
    "net": score(f"import socket\\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)", ["assert s"]),
    "nested": score("import ctypes\\nr = ctypes.CDLL(None).unshare(0x10000000)", ["assert r == 0"]),
    "works": score("def f(x):\\n    return x + 1", ["assert f(1) == 2"]),
    "forge": score(forge, ["assert f(1) == 7"]),
    "weak": score("def f(x):\\n    return x + 1", ["assert f(1) == 2"], "weak"),
}))
"""


def _untraversable_top(path: Path) -> Path | None:
    """The topmost folder above `path` that other users cannot enter (e.g. /root holding pyenv), or None."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not parent.stat().st_mode & 0o001:
            return parent
    return None


def test_strong_without_root_through_user_namespaces(tmp_path):
    """As an unprivileged user (uid 65534) the strong sandbox comes from a user namespace: files, the network and
    a nested namespace stay out of reach, and ordinary code still runs. Needs root to become that user here."""
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("unshare", "setpriv")):
        pytest.skip("needs root with unshare and setpriv to run the sandbox as an unprivileged user")
    prefix = Path(os.path.realpath(sys.base_prefix))
    top = _untraversable_top(prefix) or prefix  # cover a folder nobody cannot enter, rebinding the interpreter
    repo = Path(__file__).resolve().parent.parent
    if any(not p.stat().st_mode & 0o005 for p in (repo, *repo.parents, Path(sys.prefix)) if p != Path("/")):
        pytest.skip("the repository or the venv is not readable by other users")
    secret = Path(tempfile.mkdtemp()) / "secret.txt"
    secret.parent.chmod(0o755)
    secret.write_text("hunter2")
    secret.chmod(0o644)  # readable by every user, so only the sandbox can keep it from the program
    server = socket.create_server(("127.0.0.1", 0))
    try:
        command = ["unshare", "--mount", "--", "bash", "-c", AS_NOBODY, "as-nobody", str(top), str(prefix),
                   sys.executable, "-c", NOBODY_PROBE, str(secret), str(server.getsockname()[1])]  # fmt: skip
        env = {**os.environ, "HOME": "/tmp", "PYTHONPATH": str(repo), "PYTHONDONTWRITEBYTECODE": "1"}
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd="/tmp")
        reached, _, _ = select.select([server], [], [], 0.2)
    finally:
        server.close()
        shutil.rmtree(secret.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    expected = {"flavor": "userns", "read": 0.0, "net": 0.0, "nested": 0.0, "works": 1.0, "forge": 0.0, "weak": 1.0}
    assert report == expected  # forge: the job is not in the program's memory; weak: weak mode without root works
    assert reached == []
