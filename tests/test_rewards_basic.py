"""The first rewards: exact answer match, format and tag count, with and without `<think>` opened by the prompt."""

import doctest

import pytest

from deepseek_rl.config import ConfigError
from deepseek_rl.rewards import REWARDS, basic, call_reward, resolve_reward


def test_doctests():
    assert doctest.testmod(basic).failed == 0


def test_format_depends_on_whether_the_prompt_opened_think():
    inside = "2+2 is 4</think><answer>4</answer>"
    full = "<think>2+2 is 4</think><answer>4</answer>"
    assert basic.format_reward([inside, full], prompts=["...<｜Assistant｜><think>\n"] * 2) == [1.0, 1.0]
    # the prompt did not open <think>: the completion must
    assert basic.format_reward([inside, full], prompts=["Q:2+2="] * 2) == [0.0, 1.0]
    assert basic.tag_count([inside], prompts=["Assistant: <think>"]) == [1.0]
    assert basic.format_reward(["<think>a</think><answer>1</answer> trailing"]) == [0.0]
    assert basic.format_reward(["<think>a</think><answer>1</answer><answer>2</answer>"]) == [0.0]


def test_answer_match_none_when_gold_missing():
    assert basic.answer_match(["<answer>1</answer>"] * 2, answer=["1", ""]) == [1.0, None]
    assert basic.answer_match(["<answer>1</answer>"]) == [None]


def test_reward_table_and_user_functions():
    assert resolve_reward("format") is REWARDS["format"]
    assert resolve_reward("deepseek_rl.rewards.basic:tag_count") is basic.tag_count
    with pytest.raises(ConfigError, match="unknown reward 'formatt'. Did you mean 'format'"):
        resolve_reward("formatt")
    with pytest.raises(ConfigError, match="'deepseek_rl.rewards.basic' has no function 'nope'. It defines: .*tag_"):
        resolve_reward("deepseek_rl.rewards.basic:nope")


def test_call_reward_checks_the_contract():
    with pytest.raises(ValueError, match="returned 1 scores for 2 completions"):
        call_reward("bad", lambda completions, **kw: [1.0], ["a", "b"], {}, {})
    assert call_reward("ok", lambda completions, extra, **kw: [extra[0], None], ["a", "b"], {}, {"extra": [3, 4]}) == [
        3.0,
        None,
    ]
