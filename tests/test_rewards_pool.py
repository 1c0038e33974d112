"""The scoring engine: worker pool timeouts and crashes, reuse and shutdown, failure accounting in RewardSet's
metrics, in-process scoring, and a real training run with a pooled reward that leaves no process behind.

The misbehaving rewards below are users' "module:function" rewards; the workers import this module to run them,
so it imports nothing heavy at the top (torch, hydra: inside the tests that need them).
"""

import json
import math
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from deepseek_rl.rewards.runner import RewardRunner

HERE = "tests.test_rewards_pool"


def stuck_in_c(completions, **kwargs):
    """A huge integer power runs in C: no signal interrupts it, only killing the process."""
    return [float(len(str(10 ** (10**9))))]


def raises(completions, **kwargs):
    raise RuntimeError("reward bug")


def exits_worker(completions, **kwargs):
    os._exit(3)


def sleeps(completions, **kwargs):
    time.sleep(float(completions[0]))
    return [1.0]


def echo_length(completions, extra=None, **kwargs):
    return [float(len(completions[0]) + (extra[0] or 0))]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def runner():
    names = [f"{HERE}:{n}" for n in ("stuck_in_c", "raises", "exits_worker", "sleeps", "echo_length")]
    runner = RewardRunner(names, num_workers=2, timeout=2.0)
    yield runner
    runner.close()


def test_timeouts_errors_and_crashes_are_scored_and_counted(runner):
    start = time.monotonic()
    scores = runner.score(["0.1", "5"], {"extra": [1, 2]})
    elapsed = time.monotonic() - start
    by_name = {n.split(":")[1]: (v, s) for n, v, s in zip(scores.names, scores.values, scores.status, strict=True)}
    assert by_name["stuck_in_c"] == ([0.0, 0.0], ["timeout", "timeout"])
    assert by_name["raises"] == ([0.0, 0.0], ["error", "error"])
    assert by_name["exits_worker"] == ([0.0, 0.0], ["error", "error"])
    assert by_name["sleeps"] == ([1.0, 0.0], ["ok", "timeout"])
    assert by_name["echo_length"] == ([4.0, 3.0], ["ok", "ok"])
    assert "RuntimeError: reward bug" in scores.messages[1][0]
    # 3 timeouts of 2 s on 2 workers, plus restarts: far from the 5 s sleep or the minutes of the C loop
    assert elapsed < 15.0


def test_workers_are_reused_and_closed_without_leaks(runner):
    runner.score(["0.1"], {"extra": [0]})  # timeouts and crashes replace workers: these are new ones
    replaced = [w.proc.pid for w in runner.pool.workers]
    runner.close()
    assert runner.pool is None and not any(_alive(p) for p in replaced)
    healthy = RewardRunner([f"{HERE}:echo_length"], num_workers=2)
    try:
        assert healthy.score(["ab"], {"extra": [1]}).values == [[3.0]]
        pids = [w.proc.pid for w in healthy.pool.workers]
        assert healthy.score(["abc", "d"], {"extra": [0, 0]}).values == [[3.0, 1.0]]
        assert [w.proc.pid for w in healthy.pool.workers] == pids  # the same workers, step after step
        os.kill(pids[0], signal.SIGKILL)  # a worker dies between steps (say the OOM killer): its tasks go elsewhere
        time.sleep(0.1)
        assert healthy.score(["abcd", "e", "fg"], {"extra": [0, 0, 0]}).values == [[4.0, 1.0, 2.0]]
        pids = [w.proc.pid for w in healthy.pool.workers]
    finally:
        healthy.close()
    assert not any(_alive(p) for p in pids)


def test_in_process_scoring_and_math_verify_off_the_main_thread():
    runner = RewardRunner(["accuracy", "format"], num_workers=0)
    assert runner.pool is None and runner.inline == {"accuracy", "format"}
    completions = [r"<think>x</think><answer>\frac{1}{2}</answer>"]
    assert runner.score(completions, {"answer": ["0.5"]}).values == [[1.0], [1.0]]
    result = []
    thread = threading.Thread(target=lambda: result.append(runner.score(completions, {"answer": ["0.5"]})))
    thread.start()
    thread.join()
    assert result[0].values == [[1.0], [1.0]] and result[0].status[0] == ["ok"]  # no signal error in a thread
    assert runner.pool is None


def test_reward_set_metrics_count_failures_per_step():
    from deepseek_rl.config import RewardConfig
    from deepseek_rl.stages.reward_set import RewardSet

    cfg = RewardConfig(
        weights={"format": 1.0, f"{HERE}:raises": 0.5, f"{HERE}:sleeps": 0.5},
        num_workers=1,
        timeout=1.0,
        on_failure=None,
    )
    rewards = RewardSet(cfg)
    try:
        completions = ["<think>a</think><answer>1</answer>", "3"]
        scores = rewards.score(completions, {})
        terms = scores.terms  # [2, 3]
        assert terms.shape == (2, 3)
        assert terms[:, 0].tolist() == [1.0, 0.0]
        assert all(math.isnan(v) for v in terms[:, 1].tolist())  # on_failure=None: cannot be scored
        assert math.isnan(terms[0, 2].item()) and math.isnan(terms[1, 2].item())  # "<think>..." is no float
        metrics = rewards.metrics(terms, scores.failures)
        assert metrics[f"reward/{HERE}:raises/errors"] == 2 and metrics[f"reward/{HERE}:raises/none"] == 1.0
        assert metrics[f"reward/{HERE}:sleeps/timeouts"] == 1 and metrics[f"reward/{HERE}:sleeps/errors"] == 1
        assert metrics["reward/format/mean"] == 0.5 and metrics["reward/format/errors"] == 0
        assert scores.failures[2].tolist() == [2.0, 2.0, 2.0]  # samples scored: the counts are this call's
        assert rewards.total(terms).tolist() == [1.0, 0.0]
    finally:
        rewards.close()
        rewards.close()


def test_training_with_a_pooled_reward_counts_failures_and_leaves_no_process(tmp_path):
    from .conftest import run_cli

    # a "module:function" key does not fit Hydra's command-line grammar: a recipe of our own, on top of smoke
    recipe = {"defaults": ["smoke", "_self_"], "reward": {"weights": {"accuracy": 1.0, f"{HERE}:raises": 0.1}}}
    (tmp_path / "pooled.yaml").write_text(json.dumps(recipe))  # JSON is YAML
    mark = uuid.uuid4().hex
    result = run_cli(
        "train",
        "--config-dir",
        str(tmp_path),
        "--config-name",
        "pooled",
        f"trainer.output_dir={tmp_path / 'run'}",
        "trainer.max_steps=2",
        "logger=none",
        "reward.num_workers=1",
        cwd=tmp_path,
        env={"DEEPSEEK_RL_TEST_MARK": mark, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    for m in lines:
        assert m["reward/accuracy/timeouts"] == 0 and m["reward/accuracy/errors"] == 0
        assert m["reward/accuracy/mean"] == 0.0  # a random tiny model does not add numbers
        assert m[f"reward/{HERE}:raises/errors"] == 16  # every completion of the step, counted, training went on
    time.sleep(0.2)
    assert _processes_with_env(mark) == []


def _processes_with_env(mark: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if mark.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found
