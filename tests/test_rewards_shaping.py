"""Text and shaping rewards by hand (format, tag_count, reasoning_steps, soft_overlong, repetition,
language_consistency), every module's doctests, the reward table and the reward config checks."""

import doctest

import pytest

from deepseek_rl.config import ConfigError, RewardConfig
from deepseek_rl.rewards import INLINE, REWARDS, basic, coding, math_answer, shaping
from deepseek_rl.rewards.runner import pool_timeout, with_context
from deepseek_rl.sandbox import launcher, sandbox

R1_PROMPT = "<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜><think>\n"


@pytest.mark.parametrize("module", [basic, coding, launcher, math_answer, sandbox, shaping])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0


def test_reward_table_has_the_issue_rewards():
    wanted = {"accuracy", "format", "format_lenient", "tag_count", "reasoning_steps", "cosine", "soft_overlong"}
    wanted |= {"repetition", "language_consistency", "code", "binary_code", "answer_match"}
    assert wanted <= set(REWARDS)
    assert INLINE <= set(REWARDS) and not {"accuracy", "cosine", "code", "binary_code"} & INLINE


def test_format_strict_and_lenient_with_and_without_an_opened_think():
    inside = "2+2 is 4.</think>\n<answer>4</answer>"
    full = "<think>2+2 is 4.</think>\n<answer>4</answer>"
    chatty = "Sure! <think>2+2 is 4.</think> So: <answer>4</answer> Hope that helps."
    assert REWARDS["format"]([inside, full, chatty], prompts=[R1_PROMPT] * 3) == [1.0, 1.0, 0.0]
    assert REWARDS["format_lenient"]([inside, full, chatty], prompts=[R1_PROMPT] * 3) == [1.0, 1.0, 1.0]
    plain = "Q: 2+2?\nA:"
    assert REWARDS["format"]([inside, full], prompts=[plain] * 2) == [0.0, 1.0]
    assert REWARDS["format_lenient"]([inside, full], prompts=[plain] * 2) == [0.0, 1.0]
    assert REWARDS["tag_count"]([inside], prompts=[R1_PROMPT]) == [1.0]
    assert REWARDS["tag_count"]([inside], prompts=[plain]) == [0.75]  # <think> missing


def test_reasoning_steps():
    text = "Step 1: read.\nStep 2: add.\n- carry the one\nFinally, write 4."
    assert basic.reasoning_steps([text]) == [1.0]  # 4 markers, capped
    assert basic.reasoning_steps(["1. add\n2) carry"], expected_steps=4) == [0.5]
    assert basic.reasoning_steps(["It is 4."]) == [0.0]


def test_soft_overlong_in_tokens_and_characters():
    # max 100, buffer 20: free up to 80, then (80 - L) / 20, -1 at 100 and beyond
    ids = [[0] * n for n in (0, 80, 85, 99, 100, 130)]
    scores = shaping.soft_overlong(["x"] * 6, completion_ids=ids, max_completion_length=100, buffer_length=20)
    assert scores == pytest.approx([0.0, 0.0, -0.25, -0.95, -1.0, -1.0])
    # without completion_ids the text length in characters counts; the default buffer is a fifth (2 of 10)
    assert shaping.soft_overlong(["abcdefgh", "abcdefghi"], max_completion_length=10) == [0.0, -0.5]


def test_repetition_penalty():
    # 2-grams of "a a a a": (a,a) x3 -> 1 distinct of 3 -> 1 - 1/3 of -0.9 = -0.6
    assert shaping.repetition(["a a a a"], ngram_size=2, max_penalty=-0.9) == pytest.approx([-0.6])
    # 2-grams of "the cat sat. the cat sat.": 5, of which 3 distinct -> 1 - 3/5 = 0.4 of -1
    assert shaping.repetition(["The cat sat. the CAT sat."], ngram_size=2) == pytest.approx([-0.4])
    with pytest.raises(ValueError, match="max_penalty=0.5 must be <= 0"):
        shaping.repetition(["a b c"], max_penalty=0.5)


def test_language_consistency():
    english = "<think>First add the ones, then the tens.</think><answer>42</answer>"
    mixed = "<think>先 add 个位</think><answer>42</answer>"  # words: 先, add, 个, 位 -> 1 of 4 English
    scores = shaping.language_consistency([english, mixed, "<think>12 + 30 = 42</think>"])
    assert scores == [1.0, 0.25, None]
    assert shaping.language_consistency([mixed], language="zh") == [0.75]
    # the R1 template opened <think>: the chain of thought is everything before </think>
    assert shaping.language_consistency(["加 then</think><answer>4</answer>"], prompts=[R1_PROMPT]) == [0.5]


def test_context_fills_only_parameters_the_reward_takes():
    context = {"max_completion_length": 64}
    assert with_context(REWARDS["soft_overlong"], {}, context) == {"max_completion_length": 64}
    assert with_context(REWARDS["soft_overlong"], {"max_completion_length": 8}, context) == {"max_completion_length": 8}
    assert with_context(REWARDS["format"], {}, context) == {}


def test_pool_timeout_leaves_room_for_a_reward_own_timeout():
    assert pool_timeout(REWARDS["accuracy"], {}, 5.0) == 5.0
    assert pool_timeout(REWARDS["code"], {}, 5.0) == 10.0  # its default 8 s, plus 2 to clean up
    assert pool_timeout(REWARDS["code"], {"timeout": 20}, 5.0) == 22.0
    assert pool_timeout(REWARDS["code"], {"timeout": 1}, 5.0) == 5.0


def test_reward_config_checks():
    cfg = RewardConfig(weights={"accuracy": 1.0, "soft_overlong": 0.5}, args={"soft_overlong": {"buffer_length": 8}})
    assert cfg.num_workers is None and cfg.timeout == 10.0 and cfg.on_failure == 0.0
    with pytest.raises(ConfigError, match="reward.args.soft_overlong.bufer_length: 'soft_overlong' has no parameter"):
        RewardConfig(weights={"soft_overlong": 1.0}, args={"soft_overlong": {"bufer_length": 8}})
    # a user's function that takes **kwargs accepts any argument
    assert RewardConfig(
        weights={"tests.test_score_cli:level_bonus": 1.0}, args={"tests.test_score_cli:level_bonus": {"x": 1}}
    )
    with pytest.raises(ConfigError, match="reward.num_workers=-1 must be >= 0"):
        RewardConfig(num_workers=-1)
    with pytest.raises(ConfigError, match="reward.timeout=0 must be > 0"):
        RewardConfig(timeout=0)
