"""The control for RL (more SFT with RL's budget) and the unreliable teacher's demonstrations."""

import json
from pathlib import Path

import pytest

from deepseek_rl.data.tasks.addition import AdditionTask, addition_solution

from .conftest import run_cli


def answer_of(solution: str) -> str:
    return solution.split("<answer>")[1].split("</answer>")[0]


def test_the_unreliable_teacher_drops_carries_of_10_and_11():
    # 455 + 555: 5+5 = 10 (dropped: 00, carry 0), 5+5+0 = 10 (dropped again), 4+5 = 9 -> 900 instead of 1010
    assert addition_solution(455, 555, frozenset({0, 1, 2})) == (
        "<think>5+5+0=00 5+5+0=00 4+5+0=09</think><answer>900</answer>"
    )
    # a sum of 12 keeps its carry whatever the teacher: 7+5 = 12
    assert addition_solution(107, 105, frozenset({0, 1, 2})) == (
        "<think>7+5+0=12 0+0+1=01 1+1+0=02</think><answer>212</answer>"
    )
    clean = AdditionTask(3, 1234).splits(2000, 0, 100)
    assert all(answer_of(r["solution"]) == r["answer"] for r in clean["train"])
    always = AdditionTask(3, 1234, teacher_error=1.0).splits(2000, 0, 100)
    assert [r["prompt"] for r in always["train"]] == [r["prompt"] for r in clean["train"]]  # same problems
    assert [r["answer"] for r in always["train"]] == [r["answer"] for r in clean["train"]]  # gold answers stay
    for row in always["train"]:
        a, b = map(int, row["prompt"][2:-1].split("+"))
        carry, hit = 0, False
        for i in range(4):
            s = (a // 10**i) % 10 + (b // 10**i) % 10 + carry
            hit |= s in (10, 11)
            carry = 0 if s in (10, 11) else s // 10  # what the teacher carries on
        assert (answer_of(row["solution"]) != row["answer"]) == hit
    wrong = sum(answer_of(r["solution"]) != r["answer"] for r in AdditionTask(3, 1234, 0.7).splits(5000, 0, 0)["train"])
    assert 0.30 < wrong / 5000 < 0.38  # 7 in 10 of the ~46% of problems with such a column


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_control_spends_rls_budget(tmp_path: Path):
    result = run_cli(
        "train", "--config-name", "r1_unreliable_teacher", "logger=none", "model=tiny", "data.num_digits=2",
        "data.num_train=300", "data.num_validation=16", "data.num_eval=32", "sft.max_steps=6", "sft.batch_size=16",
        "sft.eval_every=3", "sft.num_validation=16", "sft.stop_accuracy=null", "trainer.max_steps=3",
        "trainer.batch_size=16", "trainer.micro_batch_size=8", "eval.every=3", "eval.every_prompts=8",
        "eval.num_prompts=16", "eval.samples=2", "eval.batch_size=16", "control.evaluations=2",
        f"trainer.output_dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    rl = [m for m in _lines(run / "grpo" / "metrics.jsonl") if "train/seconds" in m]
    assert [m["step"] for m in rl] == [1, 2, 3] and all(m["kl"] >= 0 for m in rl)  # log_kl: a reference, no penalty
    for kind, key in (("time", "train/seconds"), ("tokens", "train/tokens")):
        steps = [m for m in _lines(run / f"control_{kind}" / "metrics.jsonl") if "loss" in m]
        # it stopped at the first step whose cumulative spend reached RL's, not before and not after
        assert steps[-1][key] >= rl[-1][key] > steps[-2][key], kind
        evaluations = [m for m in _lines(run / f"control_{kind}" / "metrics.jsonl") if "eval/greedy_accuracy" in m]
        assert evaluations[0]["step"] == 0 and evaluations[-1]["step"] == steps[-1]["step"]
    results = json.loads((run / "results.json").read_text())
    assert set(results) == {"sft", "grpo", "control_time", "control_tokens"}
    assert (
        "| metric | cold start (SFT) | after RL (GRPO) | more SFT, same time | more SFT, same tokens |"
        in (run / "results.md").read_text()
    )
    assert (run / "curves.png").stat().st_size > 10_000


def test_control_needs_sft_and_grpo_before_it(tmp_path: Path):
    result = run_cli("train", "--config-name", "smoke", "stages=[grpo,control]", "logger=none", cwd=tmp_path)
    assert result.returncode == 2 and "stages: control" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("bad", ["control.budgets=[]", "control.budgets=[steps]", "data.task_args.teacher_error=1.5"])
def test_bad_control_and_teacher_settings(bad, tmp_path: Path):
    result = run_cli("train", "--config-name", "r1_unreliable_teacher", bad, "logger=none", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert bad.split("=")[0] in result.stderr
