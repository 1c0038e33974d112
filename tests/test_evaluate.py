"""Evaluation metrics against hand-computed values, and the `deepseek-rl eval` command's errors (the command on a
trained checkpoint: tests/test_pipeline.py, beside the run it evaluates)."""

import pytest

from deepseek_rl.stages.evaluate import majority_correct, pass_at_k, sampled_metrics
from deepseek_rl.stages.pipeline import results_table
from deepseek_rl.stages.rft import select_verified


def test_pass_at_k_unbiased_estimator_hand_computed():
    # n = 4 samples, c = 1 correct: pass@1 = 1/4; pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5; pass@4 = 1
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(4, 0, 4) == 0.0
    # n = 8, c = 2, k = 3: 1 - C(6,3)/C(8,3) = 1 - 20/56
    assert pass_at_k(8, 2, 3) == pytest.approx(1 - 20 / 56)


def test_majority_vote():
    assert majority_correct(["5", "5", "6"], [True, True, False])
    assert not majority_correct(["6", "5", "6"], [False, True, False])
    assert majority_correct(["5", "6"], [True, False])  # tie: the first seen wins
    assert not majority_correct([None, None], [False, False])
    assert majority_correct([None, "7", None], [False, True, False])  # unanswered samples do not vote


def test_sampled_metrics_hand_computed():
    def row(correct, answer, fmt=True, length=10):
        return {"correct": correct, "answer_class": answer, "format": fmt, "length": length}

    # problem 0: 2 of 3 right (answer 5 wins the vote); problem 1: 0 of 3 right
    sampled = [row(True, 5), row(True, 5), row(False, 6, fmt=False)] + [row(False, 1, length=20)] * 3
    m = sampled_metrics(sampled, count=2, n=3)
    assert m["eval/sampled_accuracy"] == pytest.approx(2 / 6)
    assert m["eval/pass@1"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["eval/pass@3"] == pytest.approx((1 + 0) / 2)
    assert m["eval/maj@3"] == pytest.approx(0.5)
    assert m["eval/format_rate"] == pytest.approx(5 / 6)
    assert m["eval/completion_length"] == pytest.approx((10 * 3 + 20 * 3) / 6)


def test_select_verified_keeps_distinct_passing_samples_per_prompt():
    prompts = ["p"] * 4 + ["q"] * 4
    completions = ["a", "a", "b", "c", "x", "y", "z", "w"]
    verified = [True, True, True, True, False, False, False, True]
    assert select_verified(prompts, completions, verified, 4, 2) == [("p", "a"), ("p", "b"), ("q", "w")]


def test_results_table():
    table = results_table(
        {
            "sft": {"eval/greedy_accuracy": 0.5, "eval/greedy_length": 30.0},
            "grpo": {"eval/greedy_accuracy": 0.9, "eval/greedy_length": 31.0},
        }
    )
    assert table.splitlines()[0] == "| metric | cold start (SFT) | after RL (GRPO) |"
    assert "| greedy_accuracy | 0.500 | 0.900 |" in table and "| greedy_length | 30.0 | 31.0 |" in table


def test_eval_command_errors_are_messages(tmp_path):
    from .conftest import run_cli

    result = run_cli("eval", "--model", str(tmp_path / "nothing"), "--data", "addition", cwd=tmp_path)
    assert result.returncode == 2 and "not a directory" in result.stderr and "Traceback" not in result.stderr


class ScriptedEngine:
    """Returns the same fixed completions for every prompt, greedy or sampled (the reward path is under test)."""

    def __init__(self, completions: list[str]) -> None:
        from deepseek_rl.models.char_tokenizer import build_char_tokenizer

        self.texts, self.tokenizer = completions, build_char_tokenizer()

    def session(self):
        import contextlib

        return contextlib.nullcontext()

    def generate(self, prompts, group_size, cfg, noise):
        import torch

        from deepseek_rl.batch import RolloutBatch

        rows = len(prompts) * group_size
        texts = [self.texts[i % len(self.texts)] for i in range(rows)]
        ones = torch.ones(rows, 2, dtype=torch.long)
        return RolloutBatch.of_prompts(prompts, group_size, ones, ones, torch.zeros(rows, dtype=torch.bool), texts)


def test_evaluation_scores_with_the_recipes_reward_args():
    """`reward.args` reach the verifier: with sources=[boxed] only the boxed answer counts, as in training."""
    from deepseek_rl.config import EvalConfig, RewardConfig, RolloutConfig
    from deepseek_rl.data.prompts import PromptSet
    from deepseek_rl.stages.evaluate import evaluate

    prompts = PromptSet(["q1", "q2"], [[1], [2]], {"answer": ["7", "7"]})
    # The last number is 7 in both; only the first has it boxed.
    sampler = ScriptedEngine([r"so \boxed{7}", "it is 7"])
    settings = EvalConfig(num_prompts=2, samples=2, correctness="accuracy", format_reward=None)
    rollout = RolloutConfig()
    default = evaluate(sampler, prompts, settings, rollout, reward=RewardConfig(weights={"accuracy": 1.0}))
    boxed_args = {"accuracy": {"sources": ["boxed"]}}
    boxed_cfg = RewardConfig(weights={"accuracy": 1.0}, args=boxed_args)
    boxed = evaluate(sampler, prompts, settings, rollout, reward=boxed_cfg)
    assert default.metrics["eval/sampled_accuracy"] == 1.0
    assert boxed.metrics["eval/sampled_accuracy"] == 0.5
    assert boxed.metrics["eval/greedy_accuracy"] == 0.5  # greedy: completion 0 for q1, completion 1 for q2


def test_eval_command_rejects_bad_reward_args(tmp_path):
    from .conftest import run_cli

    base = ("eval", "--model", str(tmp_path), "--data", "addition", "--reward", "accuracy")
    unknown = run_cli(*base, "--reward-args", '{"no_such_arg": 1}', cwd=tmp_path)
    assert unknown.returncode == 2 and "no_such_arg" in unknown.stderr and "Traceback" not in unknown.stderr
    not_json = run_cli(*base, "--reward-args", "{sources: [boxed]", cwd=tmp_path)
    assert not_json.returncode == 2 and "not JSON" in not_json.stderr and "Traceback" not in not_json.stderr


def test_majority_vote_counts_equivalent_answers_as_one():
    """maj@k asks the verifier whether two answers are the same: with math-verify, \\frac{1}{2}, 0.5 and 1/2 are one
    answer with 3 votes, which beats 3 with 2 votes (counted as strings, 3 would win and maj@5 would be 0)."""
    from deepseek_rl.config import EvalConfig, RewardConfig, RolloutConfig
    from deepseek_rl.data.prompts import PromptSet
    from deepseek_rl.stages.evaluate import evaluate

    prompts = PromptSet(["q"], [[1]], {"answer": ["1/2"]})
    texts = [r"so \boxed{3}", r"\boxed{\frac{1}{2}}", r"\boxed{0.5}", r"\boxed{3}", r"\boxed{1/2}"]
    settings = EvalConfig(num_prompts=1, samples=5, correctness="accuracy", format_reward=None)
    reward = RewardConfig(weights={"accuracy": 1.0}, num_workers=0)
    report = evaluate(ScriptedEngine(texts), prompts, settings, RolloutConfig(), reward=reward)
    sampled = [row for row in report.samples if row["kind"] == "sampled"]
    assert [row["answer_class"] for row in sampled] == [0, 1, 1, 0, 1]
    assert report.metrics["eval/sampled_accuracy"] == pytest.approx(3 / 5)
    assert report.metrics["eval/maj@5"] == 1.0
    # answer_match compares strings exactly: there 3 is the majority and it is wrong
    exact = RewardConfig(weights={"answer_match": 1.0}, num_workers=0)
    settings = EvalConfig(num_prompts=1, samples=5, correctness="answer_match", format_reward=None)
    texts = ["<answer>3</answer>", "<answer>1/2</answer>", "<answer>0.5</answer>", "<answer>3</answer>", "x"]
    report = evaluate(ScriptedEngine(texts), prompts, settings, RolloutConfig(), reward=exact)
    assert report.metrics["eval/maj@5"] == 0.0
