"""More failures through the real command line, as in test_faults.py (which grew long): each ends in one line on
stderr naming the cause and the fix, without a traceback, and loses nothing. Each section names its cases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import run_cli
from .test_faults import SMOKE, lines_in, message, no_unshare_path, steps, train


def start(*overrides: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "deepseek_rl.cli", "train", *SMOKE, *overrides], cwd=cwd,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


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

    proc = start(*args, "trainer.resume=auto", cwd=tmp_path)
    wait_for(lines_in(run / "metrics.jsonl", stopped + 1), proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)  # well inside the next step
    proc.send_signal(signal.SIGINT)
    line = message(finish(proc), 130)
    assert line == ("deepseek-rl: interrupted (Ctrl-C twice): stopped at once, without a checkpoint of the step in "
                    "progress; resume from the last checkpoint with trainer.resume=auto")  # fmt: skip
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"step-{stopped:08d}"]

    resumed = run_cli("train", *SMOKE, *args[1:], "trainer.max_steps=" + str(stopped + 1), "trainer.resume=auto",
                      cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {run / 'checkpoints' / f'step-{stopped:08d}'}" in resumed.stderr
    assert steps(run) == list(range(1, stopped + 2))
