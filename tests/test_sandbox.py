"""The code sandbox under attack: each test runs a hostile solution through the `code` reward (a real sandbox
process), asserts that it scores 0, and checks that the trainer process and its machine are unharmed.

A hostile solution is written so that its tests pass only if the attack worked (it read the secret, reached the
server, killed the victim...), so a 0 means the attack failed, not merely that the program crashed. The attacks that
need namespaces and an unprivileged uid run in strong mode (root with `unshare`: our machines and CI, where they
must run); elsewhere they skip with the reason. The weak mode's own guarantees are tested everywhere.
"""

import os
import select
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from deepseek_rl.rewards import sandbox
from deepseek_rl.rewards.coding import code

TIMEOUT = 2.0


@pytest.fixture(scope="module")
def strong():
    if sandbox.isolation() != "strong":
        reason = "strong sandbox unavailable (needs root and util-linux unshare); see the warning above"
        if os.environ.get("CI"):
            pytest.fail(reason + " - CI runs as root and must run the attack tests")
        pytest.skip(reason)


def attack(solution: str, tests: list[str] | str = "assert True", timeout: float = TIMEOUT) -> tuple[float, float]:
    """(score, seconds) of a hostile solution through the real `code` reward."""
    start = time.monotonic()
    [score] = code([f"```python\n{solution}\n```"], tests=[tests], timeout=timeout)
    return score, time.monotonic() - start


def sandbox_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("deepseek-rl-sandbox-*")}


def test_busy_loop_and_sleep_cannot_hang_the_trainer(strong):
    for solution in ("while True:\n    pass", "import time\ntime.sleep(600)"):
        score, seconds = attack(solution)
        assert score == 0.0 and seconds < TIMEOUT + 2.0


def test_a_test_that_never_returns_still_counts_the_ones_before(strong):
    tests = ["assert True", "assert True", "while True: pass"]
    score, seconds = attack("x = 1", tests)
    assert score == pytest.approx(2 / 3) and seconds < TIMEOUT + 2.0


def test_fork_bomb_is_contained(strong):
    score, seconds = attack("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    assert score == 0.0 and seconds < TIMEOUT + 3.0
    assert subprocess.run(["true"], timeout=10).returncode == 0  # the trainer can still start processes


def test_memory_exhaustion_is_contained(strong):
    score, _ = attack("blocks = []\nwhile True:\n    blocks.append(bytearray(64 * 2**20))", "assert len(blocks) > 1000")
    assert score == 0.0
    score, _ = attack("big = bytearray(16 * 2**30)", "assert len(big) > 0")
    assert score == 0.0


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


def test_weak_mode_keeps_timeouts_and_limits():
    limits = sandbox.Limits(timeout=1.0, memory_mb=256)
    slow = sandbox.execute("import time\ntime.sleep(30)", "assert True", limits=limits, mode="weak")
    assert slow.timed_out and slow.passed == 0 and slow.seconds < 4.0
    hungry = sandbox.execute("x = bytearray(2 * 2**30)", "assert True", limits=limits, mode="weak")
    assert hungry.passed == 0 and "MemoryError" in hungry.output
    ok = sandbox.execute("def f():\n    return 1", ["assert f() == 1", "assert f() == 2"], limits=limits, mode="weak")
    assert (ok.passed, ok.total, ok.finished, ok.mode) == (1, 2, True, "weak")


def test_output_is_capped():
    limits = sandbox.Limits(timeout=5.0, output_bytes=1000)
    execution = sandbox.execute("for _ in range(100000):\n    print('spam' * 20)", "assert True", limits=limits)
    assert execution.passed == 1 and len(execution.output) <= 1000
