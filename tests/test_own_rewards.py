"""Users' rewards as a new user writes them: a file or module named on the command line, Python callables given to
`train`, rewards that score a whole group, a sequence-classification model, and TRL's conversational format."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import run_cli

MY_REWARDS = '''
def brevity(completions, **kwargs):
    return [-len(c) / 100 for c in completions]


def rank_in_group(completions, **kwargs):
    """The G completions of one prompt at once: 1.0 for the shortest, 0.0 for the others."""
    shortest = min(range(len(completions)), key=lambda i: len(completions[i]))
    return [float(i == shortest) for i in range(len(completions))]


rank_in_group.per_group = True


def broken_group(completions, **kwargs):
    raise RuntimeError("group reward bug")


broken_group.per_group = True
'''

SMALL = ["logger=none", "trainer.max_steps=1", "trainer.save_final=false", "trainer.output_dir=out"]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def console(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed `deepseek-rl` script (not `python -m`: the working directory is not on its path)."""
    script = Path(sys.executable).parent / "deepseek-rl"
    return subprocess.run([str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_reward_file_named_on_the_command_line_trains_and_logs(tmp_path: Path):
    (tmp_path / "my_rewards.py").write_text(MY_REWARDS)
    result = run_cli(
        "train", "--config-name", "smoke", "+reward.functions.brevity=my_rewards.py:brevity",
        "+reward.weights.brevity=0.5", "+reward.functions.rank=my_rewards.py:rank_in_group", *SMALL, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    line = metrics(tmp_path / "out")[-1]
    assert line["reward/brevity/mean"] < 0 and line["reward/brevity/errors"] == 0
    # per group of G=4: exactly one completion (the shortest) scores 1.0
    assert line["reward/rank/mean"] == pytest.approx(0.25) and line["reward/rank/errors"] == 0


def test_a_module_reward_beside_the_user_works_with_the_installed_command(tmp_path: Path):
    (tmp_path / "my_rewards.py").write_text(MY_REWARDS)
    result = console(
        "train", "--config-name", "smoke", "+reward.functions.brevity=my_rewards:brevity", *SMALL, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reward/brevity/mean" in metrics(tmp_path / "out")[-1]


@pytest.mark.parametrize(
    "spec,message",
    [
        ("nope.py:brevity", "reward.functions.brevity: no such file"),
        ("my_rewards.py:brevityy", "my_rewards.py' has no function 'brevityy'. Did you mean 'brevity'? It defines: "),
        ("no_such_module:brevity", "reward.functions.brevity: cannot import module 'no_such_module'"),
        ("syntax_error.py:f", "reward.functions.brevity: importing"),
    ],
)
def test_a_missing_file_or_function_is_one_line_before_any_model_loads(tmp_path: Path, spec, message):
    (tmp_path / "my_rewards.py").write_text(MY_REWARDS)
    (tmp_path / "syntax_error.py").write_text("def f(:\n")
    result = run_cli("train", "--config-name", "smoke", f"+reward.functions.brevity={spec}", *SMALL, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing ran


def test_a_weights_key_with_a_colon_says_how_to_name_the_function(tmp_path: Path):
    result = run_cli("train", "--config-name", "smoke", "+reward.weights.my_rewards:my_reward=1.0", cwd=tmp_path)
    assert result.returncode == 2
    assert "+reward.functions.my_reward=my_rewards:my_reward +reward.weights.my_reward=1.0" in result.stderr


def test_python_train_takes_callables_per_sample_and_per_group(tmp_path: Path):
    from deepseek_rl import load_recipe, train
    from deepseek_rl.rewards import group_reward

    calls = {"sample": [], "group": []}

    def mine(completions, **kwargs):
        calls["sample"].append(len(completions))
        return [float(len(c) % 2) for c in completions]

    @group_reward
    def ranked(prompts, completions, answer, **kwargs):  # TRL's argument order; one prompt per call
        calls["group"].append((len(completions), len(set(prompts)), len(set(answer))))
        return [float(i) / len(completions) for i in range(len(completions))]

    cfg = load_recipe("smoke", ["logger=none", "trainer.max_steps=1", "trainer.save_final=false"])
    cfg.reward.weights["ranked"] = 0.1
    checkpoints = train(cfg, tmp_path / "run", reward_funcs={"mine": mine, "ranked": ranked})
    assert checkpoints == {"grpo": tmp_path / "run" / "final"}
    line = metrics(tmp_path / "run")[-1]
    assert "reward/mine/mean" in line and line["reward/ranked/mean"] == pytest.approx((0 + 1 + 2 + 3) / 4 / 4)
    # 16 completions, one per call, and once the first group as a whole (the batch-level check of the first step)
    assert calls["sample"].count(1) == 16 and calls["sample"].count(4) == 1 and len(calls["sample"]) == 17
    assert calls["group"] == [(4, 1, 1)] * 4  # 4 groups of G=4, each with its own prompt and answer


def test_group_rewards_in_the_workers_and_their_failures(tmp_path: Path):
    from deepseek_rl.rewards.runner import RewardRunner

    (tmp_path / "my_rewards.py").write_text(MY_REWARDS)
    functions = {"rank": f"{tmp_path}/my_rewards.py:rank_in_group", "broken": f"{tmp_path}/my_rewards.py:broken_group"}
    runner = RewardRunner(["rank", "broken"], num_workers=1, functions=functions)
    try:
        completions = ["aaa", "a", "aa", "aaaa", "bb", "bbb", "b", "bbbb"]
        scores = runner.score(completions, {"answer": ["x"] * 8}, group_size=4)
    finally:
        runner.close()
    assert scores.values[0] == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert scores.status[1] == ["error"] * 8 and "group reward bug" in scores.messages[1][0]


TRL_STYLE = '''
import re


def think_then_answer(completions, **kwargs):
    """Written for TRL's conversational format: each completion is a list of messages."""
    contents = [completion[0]["content"] for completion in completions]
    return [1.0 if re.search(r"</think>", content) else 0.0 for content in contents]


def asked_a_sum(prompts, completions, **kwargs):
    """TRL passes the prompt's messages too; the user's message holds the problem."""
    assert all(c[0]["role"] == "assistant" for c in completions)
    return [float("+" in prompt[-1]["content"] and prompt[-1]["role"] == "user") for prompt in prompts]
'''


def test_a_reward_written_for_trls_conversational_format_runs_unchanged(shared, tmp_path: Path):
    (tmp_path / "trl_rewards.py").write_text(TRL_STYLE)
    result = run_cli(
        "train", "--config-name", "r1_tokenizer_smoke", "+reward.functions.think=trl_rewards.py:think_then_answer",
        "+reward.functions.asked=trl_rewards.py:asked_a_sum", *SMALL, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    line = metrics(tmp_path / "out")[-1]
    assert line["reward/think/errors"] == 0 and line["reward/asked/errors"] == 0
    assert line["reward/asked/mean"] == 1.0
    assert "reward/format/mean" in line  # the table's rewards still get text


def test_conversational_columns_reach_users_rewards_as_messages():
    from deepseek_rl.rewards.runner import PROMPT_MESSAGES, RewardRunner

    seen = {}

    def trl_reward(prompts, completions, **kwargs):
        seen.update(prompts=prompts, completions=completions, keys=set(kwargs))
        return [1.0] * len(completions)

    runner = RewardRunner(["trl", "format"], num_workers=0, functions={"trl": trl_reward})
    messages = [[{"role": "system", "content": "s"}, {"role": "user", "content": "2+2"}]]
    scores = runner.score(["<think>a</think><answer>4</answer>"], {"prompts": ["<chat>2+2"], PROMPT_MESSAGES: messages})
    assert seen["completions"] == [[{"role": "assistant", "content": "<think>a</think><answer>4</answer>"}]]
    assert seen["prompts"] == messages and PROMPT_MESSAGES not in seen["keys"]
    assert scores.values == [[1.0], [1.0]]  # format got the text
    runner.score(["x"], {"prompts": ["plain"]})  # no chat template: text, as before
    assert seen["completions"] == ["x"] and seen["prompts"] == ["plain"]


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama sequence classifier (one logit) with the character tokenizer, saved like a Hub model."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from deepseek_rl.models.char_tokenizer import build_char_tokenizer

    directory = tmp_path_factory.mktemp("reward_model")
    tokenizer = build_char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id, max_position_embeddings=256,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_a_reward_model_scores_prompt_and_completion_like_a_direct_forward(reward_model_dir: Path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from deepseek_rl.config import RewardConfig
    from deepseek_rl.stages.reward_set import RewardSet

    cfg = RewardConfig(weights={"answer_match": 1.0}, models={"rm": str(reward_model_dir)}, model_batch_size=2)
    assert cfg.weights == {"answer_match": 1.0, "rm": 1.0}
    rewards = RewardSet(cfg, device="cpu")
    completions, prompts = ["<answer>12</answer>", "no", "<think>x</think>"], ["1+11=", "2+2=", "3+3="]
    terms = rewards.score(completions, {"prompts": prompts, "answer": ["12", "4", "6"]}).terms
    rewards.close()
    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(reward_model_dir)
    with torch.no_grad():
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        inputs = [tokenizer(t, return_tensors="pt", add_special_tokens=False) for t in texts]
        expected = [model(**x).logits[0, 0].item() for x in inputs]
    assert terms[:, 0].tolist() == [1.0, 0.0, 0.0]
    assert terms[:, 1].tolist() == pytest.approx(expected, abs=1e-5)  # padding in batches of 2 changes nothing


def test_training_with_a_reward_model_from_the_command_line(reward_model_dir: Path, tmp_path: Path):
    result = run_cli(
        "train", "--config-name", "smoke", f"+reward.models.rm={reward_model_dir}", "+reward.weights.rm=0.1", *SMALL,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reward/rm/mean" in metrics(tmp_path / "out")[-1]
    missing = run_cli("train", "--config-name", "smoke", f"+reward.models.rm={tmp_path}/none", *SMALL, cwd=tmp_path)
    assert missing.returncode == 2 and "reward.models.rm=" in missing.stderr and "Traceback" not in missing.stderr


def test_users_rewards_run_in_the_workers_by_absolute_path(tmp_path: Path, monkeypatch):
    """The trainer validates the file relative to its working directory; the workers get its absolute path."""
    from deepseek_rl.config import RewardConfig
    from deepseek_rl.rewards.runner import RewardRunner

    (tmp_path / "my_rewards.py").write_text(MY_REWARDS)
    monkeypatch.chdir(tmp_path)
    cfg = RewardConfig(weights={"brevity": 1.0}, functions={"brevity": "my_rewards.py:brevity"})
    assert cfg.functions["brevity"] == f"{tmp_path}/my_rewards.py:brevity"
    monkeypatch.chdir(os.path.dirname(tmp_path))
    runner = RewardRunner(["brevity"], num_workers=1, functions=cfg.functions)
    try:
        assert runner.score(["abcd"], {}).values == [[-0.04]]
    finally:
        runner.close()
