"""More failures through the real command line, as in test_faults.py (which grew long): each ends in one line on
stderr naming the cause and the fix, without a traceback, and loses nothing. Each section names its cases."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .conftest import run_cli
from .test_distributed import launch
from .test_faults import SMOKE, digest, lines_in, message, no_unshare_path, steps, train

LOCK = ".deepseek-rl.lock"


def start(*overrides: str, cwd: Path, stderr: Any = subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "deepseek_rl.cli", "train", *SMOKE, *overrides], cwd=cwd,
                            text=True, stdout=subprocess.PIPE, stderr=stderr)  # fmt: skip


def wait_for(ready, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while not ready():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# ------------------------------------------------------------------------------- errors that used to end in a traceback


def test_a_reward_model_without_model_type_is_one_line(tmp_path):
    folder = tmp_path / "rm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden_size": 8, "num_labels": 1}))
    result = train(f"+reward.models.rm={folder}", f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert message(result, 2) == (
        f"deepseek-rl: configuration error: reward.models.rm={folder}: its config.json has no `model_type`, so "
        'transformers cannot tell the architecture; save the model with save_pretrained, or add "model_type" (e.g. '
        '"llama", "qwen2") to config.json'
    )


def test_wandb_that_cannot_be_imported_is_one_line_before_any_model_loads(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "wandb.py").write_text("raise ImportError('wandb is broken here (a test)')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(broken), *filter(None, [os.environ.get("PYTHONPATH")])])}
    args = ["--config-name", "smoke", "logger=wandb", f"trainer.output_dir={tmp_path / 'run'}"]
    line = message(run_cli("train", *args, cwd=tmp_path, env=env), 2)
    assert line == ("deepseek-rl: configuration error: logger=wandb needs the wandb package, which cannot be imported "
                    "(ImportError: wandb is broken here (a test)); install it (pip install wandb) or choose another "
                    "logger: logger=none (metrics.jsonl only), logger=tensorboard or logger=mlflow")  # fmt: skip
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------------------------------------- tool calls


def test_tool_calls_refuse_to_run_without_isolation_before_any_model_loads(tmp_path):
    env = no_unshare_path(tmp_path)
    tools = ["rollout.tools.enabled=true", "trainer.max_steps=1", f"trainer.output_dir={tmp_path / 'run'}"]
    line = message(train(*tools, cwd=tmp_path, env=env), 2)
    assert line.startswith("deepseek-rl: configuration error: reward.sandbox=auto: refusing to run untrusted code "
                           "without isolation (util-linux `unshare` not found)")  # fmt: skip
    assert line.endswith("or set reward.sandbox=weak to run it weakly on purpose")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    line = message(train(*tools, "reward.sandbox=strong", cwd=tmp_path, env=env), 2)
    assert "reward.sandbox=strong: strong isolation is not available here (util-linux `unshare` not found)" in line
    weak = train(*tools, "reward.sandbox=weak", cwd=tmp_path, env=env)  # the explicit opt-in trains
    assert weak.returncode == 0, weak.stderr[-3000:]


# --------------------------------------------------------------------------------------------------------------- Ctrl-C


SLOW_REWARD = """import time


def slow(completions, **kwargs):
    time.sleep(0.1)
    return [0.0] * len(completions)
"""


def test_ctrl_c_checkpoints_and_a_second_one_stops_at_once(tmp_path):
    """Ctrl-C once: the step finishes, a checkpoint is written, exit status 130 and one line; resume continues.
    Ctrl-C twice: the run stops at once (130, one line); the checkpoints before it are whole."""
    (tmp_path / "slow.py").write_text(SLOW_REWARD)  # 0.1 s per completion: steps of ~2 s, in this process
    run = tmp_path / "run"
    args = ["trainer.max_steps=50", "reward.num_workers=0", "+reward.functions.slow=slow.py:slow",
            "+reward.weights.slow=0.0", f"trainer.output_dir={run}"]  # fmt: skip
    proc = start(*args, cwd=tmp_path)
    wait_for(lines_in(run / "metrics.jsonl", 1), proc)
    proc.send_signal(signal.SIGINT)
    result = finish(proc)
    line = message(result, 130)
    assert "deepseek-rl: Ctrl-C: stopping after this step's checkpoint (Ctrl-C again stops at once)" in result.stderr
    stopped = len(steps(run))
    assert line == (f"deepseek-rl: grpo stage interrupted (Ctrl-C) after step {stopped}; checkpoint saved; resume "
                    "with trainer.resume=auto")  # fmt: skip
    assert (run / "checkpoints" / f"step-{stopped:08d}").is_dir() and stopped < 50

    err = tmp_path / "second.err"
    with err.open("w") as sink:
        proc = start(*args, "trainer.resume=auto", cwd=tmp_path, stderr=sink)
        wait_for(lines_in(run / "metrics.jsonl", stopped + 1), proc)
        proc.send_signal(signal.SIGINT)
        # the second once the first was taken, inside the same step: two signals that reach a process busy in one
        # long C call are delivered as one
        wait_for(lambda: "Ctrl-C again stops at once" in err.read_text(), proc)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=600)
    line = message(subprocess.CompletedProcess(proc.args, proc.returncode, "", err.read_text()), 130)
    assert line == ("deepseek-rl: interrupted (Ctrl-C twice): stopped at once, without a checkpoint of the step in "
                    "progress; resume from the last checkpoint with trainer.resume=auto")  # fmt: skip
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"step-{stopped:08d}"]

    resumed = run_cli("train", *SMOKE, *args[1:], "trainer.max_steps=" + str(stopped + 1), "trainer.resume=auto",
                      cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {run / 'checkpoints' / f'step-{stopped:08d}'}" in resumed.stderr
    assert steps(run) == list(range(1, stopped + 2))


# ----------------------------------------------------------------------------------------------------------- run folder


def dead_pid() -> int:
    """The pid of a process that has ended (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_run_in_a_busy_folder_stops_and_names_the_first(tmp_path):
    run = tmp_path / "run"
    first = start("trainer.max_steps=500", "trainer.save_every=2", f"trainer.output_dir={run}", cwd=tmp_path)
    wait_for(lines_in(run / "metrics.jsonl", 2), first)
    second = train("trainer.max_steps=2", f"trainer.output_dir={run}", cwd=tmp_path)
    line = message(second, 2)
    holder = f"pid {first.pid} on host {socket.gethostname()}, started "
    assert line.startswith(f"deepseek-rl: configuration error: trainer.output_dir={run} is in use by another run "
                           f"({holder}"), line  # fmt: skip
    assert line.endswith("); wait for it to finish, stop it, or choose another trainer.output_dir")
    first.send_signal(signal.SIGTERM)
    assert finish(first).returncode == 75
    done = steps(run)
    assert done == list(range(1, len(done) + 1))  # one run's lines only, in order
    assert not (run / LOCK).exists()  # given back at the end


def test_a_stale_lock_is_taken_over_and_another_hosts_lock_is_not(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text(json.dumps({"pid": 1, "host": "node-7", "started": "2026-12-01 10:00:00"}))
    line = message(train("trainer.max_steps=1", f"trainer.output_dir={run}", cwd=tmp_path), 2)
    assert line == (f"deepseek-rl: configuration error: trainer.output_dir={run} is locked by a run on another host "
                    "(pid 1 on host node-7, started 2026-12-01 10:00:00), which cannot be checked from here; if that "
                    f"run has ended, delete {run / LOCK}, or choose another trainer.output_dir")  # fmt: skip

    pid, host = dead_pid(), socket.gethostname()
    (run / LOCK).write_text(json.dumps({"pid": pid, "host": host, "started": "2026-12-01 10:00:00"}))
    result = train("trainer.max_steps=1", f"trainer.output_dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (f"deepseek-rl: took over the stale lock of trainer.output_dir={run} left by pid {pid} on host {host}, "
            "started 2026-12-01 10:00:00, which is no longer running") in result.stderr  # fmt: skip
    assert steps(run) == [1] and not (run / LOCK).exists()


def test_a_new_run_in_a_used_folder_needs_an_explicit_choice(tmp_path):
    run = tmp_path / "run"
    first = train("trainer.max_steps=2", "trainer.save_every=1", f"trainer.output_dir={run}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (run / "notes.txt").write_text("mine")
    before = digest(run)

    line = message(train("trainer.max_steps=3", f"trainer.output_dir={run}", cwd=tmp_path), 2)
    assert line.startswith(f"deepseek-rl: configuration error: trainer.output_dir={run} holds an earlier run "
                           "(metrics.jsonl, checkpoints, final, summary.json, stage.json); continue it with "
                           "trainer.resume=auto, start over there with trainer.overwrite=true"), line  # fmt: skip
    assert digest(run) == before  # nothing of the earlier run was touched

    both = train("trainer.overwrite=true", "trainer.resume=auto", f"trainer.output_dir={run}", cwd=tmp_path)
    assert "trainer.overwrite=true starts over but trainer.resume=auto continues: choose one" in message(both, 2)

    again = train("trainer.max_steps=3", "trainer.overwrite=true", f"trainer.output_dir={run}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "trainer.overwrite: removed the earlier run's checkpoints, curves.png, final, metrics.jsonl" in again.stderr
    assert steps(run) == [1, 2, 3] and not (run / "checkpoints").exists()  # no step-1/step-2 beside the new export
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    assert (run / "notes.txt").read_text() == "mine"  # only what runs write is removed


def test_on_two_ranks_only_rank_0_checks_the_folder_and_both_stop(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / LOCK, "w") as held:  # a live run holds it: this test process
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}))
        held.flush()
        start_time = time.monotonic()
        result = launch("cpu_ddp.yaml", [*SMOKE, "trainer.max_steps=2", f"trainer.output_dir={run}"], tmp_path)
    assert result.returncode != 0 and time.monotonic() - start_time < 300
    expected = f"deepseek-rl: configuration error: trainer.output_dir={run} is in use by another run (pid {os.getpid()}"
    lines = [line for line in result.stderr.splitlines() if line.startswith("deepseek-rl")]
    assert lines and all(line.startswith(expected) for line in lines), result.stderr[-4000:]  # none failed otherwise
    assert "/deepseek_rl/" not in result.stderr  # no traceback of ours (the launcher prints its own)
    assert not (run / "metrics.jsonl").exists()
    free = launch("cpu_ddp.yaml", [*SMOKE, "trainer.max_steps=2", f"trainer.output_dir={run}"], tmp_path)
    assert free.returncode == 0, free.stderr[-4000:]  # rank 0 alone took the lock: rank 1 did not find it taken
    assert steps(run) == [1, 2] and not (run / LOCK).exists()
