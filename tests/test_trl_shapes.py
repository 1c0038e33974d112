"""A TRL user's shapes work as they are: reward_funcs as a list with reward_weights, datasets.Dataset objects with
conversational prompts, a model object with its processing_class; and a reward that scores a batch as a whole
(open-r1's len_reward) is refused with the fix instead of being silently called one sample at a time."""

import json
from pathlib import Path

import datasets
import pytest

from deepseek_rl import load_recipe, train
from deepseek_rl.config import ConfigError, ModelConfig
from deepseek_rl.data.tasks.addition import AdditionTask
from deepseek_rl.models.char_tokenizer import build_char_tokenizer
from deepseek_rl.models.loading import load_model

from .conftest import run_cli


def conversational_rows(count: int, seed: int) -> datasets.Dataset:
    problems = AdditionTask(2, seed).splits(count, 0, 0)["train"]
    return datasets.Dataset.from_list(
        [{"prompt": [{"role": "user", "content": r["prompt"]}], "solution": r["answer"]} for r in problems]
    )


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_trl_shapes_train(tmp_path):
    seen = {}

    def accuracy_reward(completions, solution, **kwargs):  # written for TRL: conversational completions
        seen["completion"], seen["prompts"] = completions[0], kwargs["prompts"][0]
        return [float(c[0]["content"].rstrip().endswith(s)) for c, s in zip(completions, solution, strict=True)]

    def length_penalty(completions, **kwargs):
        return [-len(c[0]["content"]) / 100 for c in completions]

    cfg = load_recipe("smoke_chat", ["logger=none", "trainer.max_steps=2", "eval.every=0"])
    cfg.reward.weights = {"format": 0.2}
    tok = build_char_tokenizer(chat=True)
    policy = load_model(ModelConfig(), tok, seed=3)
    train(
        cfg, tmp_path / "run", reward_funcs=[accuracy_reward, length_penalty], reward_weights=[1.0, 0.5],
        train_dataset=conversational_rows(64, 1), eval_dataset=conversational_rows(16, 2), model=policy,
        processing_class=tok,
    )  # fmt: skip
    line = metrics(tmp_path / "run")[-1]
    assert {"reward/accuracy_reward/mean", "reward/length_penalty/mean", "reward/format/mean"} <= set(line)
    assert seen["completion"][0]["role"] == "assistant" and seen["prompts"][0]["role"] == "user"
    assert cfg.reward.weights == {"format": 0.2, "accuracy_reward": 1.0, "length_penalty": 0.5}
    assert (tmp_path / "run" / "data" / "train.parquet").is_file() and (tmp_path / "run" / "initial_model").is_dir()
    assert cfg.model.path == str(tmp_path / "run" / "initial_model")


def test_reward_weights_must_match_reward_funcs(tmp_path):
    cfg = load_recipe("smoke", ["logger=none", "trainer.max_steps=1"])
    with pytest.raises(ConfigError, match="reward_weights has 1 weights for 2 reward_funcs"):
        train(cfg, tmp_path, reward_funcs=[lambda completions, **k: [0.0] * len(completions)] * 2, reward_weights=[1])


LEN_REWARD = '''
def len_reward(completions, **kwargs):
    # open-r1's idea: reward the shortest completions of the batch, which needs the whole batch at once
    lengths = [len(c) for c in completions]
    low, high = min(lengths), max(lengths)
    if high == low:
        return [0.0] * len(completions)
    return [0.5 - (n - low) / (high - low) for n in lengths]
'''


def test_a_batch_level_reward_is_refused_with_the_fix(tmp_path):
    (tmp_path / "my_rewards.py").write_text(LEN_REWARD)
    done = run_cli(
        "train", "--config-name", "smoke", "logger=none", "+reward.functions.len_reward=my_rewards.py:len_reward",
        f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "reward 'len_reward' scores the 4 completions of a group differently when it gets them together" in last
    assert "@group_reward" in last and "Traceback" not in done.stderr
    # marked as a group reward, it runs
    marked = LEN_REWARD.replace("def len_reward", "@group_reward\ndef len_reward")
    marked = "from deepseek_rl.rewards import group_reward\n" + marked
    (tmp_path / "my_rewards.py").write_text(marked)
    done = run_cli(
        "train", "--config-name", "smoke", "logger=none", "+reward.functions.len_reward=my_rewards.py:len_reward",
        "trainer.max_steps=1", f"trainer.output_dir={tmp_path / 'run2'}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
