"""`accuracy` and `cosine`: hand-checked equivalences, then real GSM8K and MATH data through the worker pool."""

import json
import random
import time

import pytest

from deepseek_rl.rewards.math_answer import accuracy, cosine, extract_answer, gold_text
from deepseek_rl.rewards.runner import RewardRunner

# (completion, gold, expected score), each checked by hand.
CASES = [
    (r"<think>half</think><answer>\frac{1}{2}</answer>", "0.5", 1.0),  # LaTeX fraction vs decimal
    (r"so the answer is $\boxed{\dfrac{3}{4}}$.", "0.75", 1.0),  # boxed, \dfrac
    ("She pays 1,600 dollars in total.", "Natalia ... = <<2*800=1600>>1600\n#### 1,600", 1.0),  # GSM8K gold
    ("<answer>25</answer>", "025", 1.0),  # zero-padded gold (AIME style)
    (r"<answer>\{1, 2\}</answer>", r"\{2,1\}", 1.0),  # sets ignore order
    ("<answer>2, 3</answer>", "2,3", 1.0),  # MATH's list of solutions
    ("<answer>(3, 4]</answer>", "(3,4]", 1.0),  # interval
    ("<answer>[3, 4]</answer>", "(3,4]", 0.0),  # a closed end is a different interval
    ("<answer>x^2+2x+1</answer>", "(x+1)^2", 1.0),  # symbolic equivalence
    ("<answer>The answer is 5 apples</answer>", "5", 1.0),  # words around the number
    ("The temperature fell to -10 degrees.", "#### -10", 1.0),  # negative last number
    ("<answer>7</answer>", "8", 0.0),
    ("I cannot solve this.", "3", 0.0),  # no answer at all
    ("<answer>4</answer>", r"\frac{", None),  # unparseable gold: cannot be scored
    ("<answer>4</answer>", "", None),
]


@pytest.mark.parametrize("completion,gold,expected", CASES)
def test_accuracy_by_hand(completion, gold, expected):
    assert accuracy([completion], answer=[gold]) == [expected]


def test_accuracy_without_gold_column_is_none():
    assert accuracy(["<answer>1</answer>"]) == [None]
    assert accuracy(["<answer>1</answer>"], answer=[None]) == [None]


def test_answer_sources_follow_the_configured_order():
    completion = r"<answer>3</answer> on reflection \boxed{4}, i.e. 5"
    assert extract_answer(completion) == ("answer", "3")
    assert accuracy([completion], answer=["4"]) == [0.0]
    assert accuracy([completion], answer=["4"], sources=["boxed", "answer"]) == [1.0]
    assert accuracy([completion], answer=["5"], sources=["number"]) == [1.0]
    assert extract_answer("no digits here") is None


def test_gsm8k_gold_text():
    assert gold_text("a\n#### 1,600") == "1600"
    assert gold_text("x #### 3 \n#### -3") == "-3"


def test_cosine_by_hand():
    # max_completion_length 100, lengths in tokens from completion_ids:
    # correct at 0 tokens -> 1.0, at 50 -> 0.75, at >= 100 -> 0.5; wrong at 0 -> -1.0, at 50 -> -0.75, at 100 -> -0.5
    completions = ["<answer>4</answer>"] * 3 + ["<answer>5</answer>"] * 3
    ids = [[], [0] * 50, [0] * 120] * 2
    scores = cosine(completions, answer=["4"] * 6, completion_ids=ids, max_completion_length=100)
    assert scores == pytest.approx([1.0, 0.75, 0.5, -1.0, -0.75, -0.5])
    assert cosine(["<answer>4</answer>"], answer=[r"\frac{"], max_completion_length=10) == [None]


@pytest.fixture(scope="module")
def math_pool():
    runner = RewardRunner(["accuracy"], num_workers=2, timeout=10.0)
    yield runner
    runner.close()


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _shuffled(n: int) -> list[int]:
    """A derangement-like seeded permutation: no row keeps its own index."""
    order = list(range(n))
    random.Random(0).shuffle(order)
    return [(j + 1) % n if j == i else j for i, j in enumerate(order)]


def test_gsm8k_final_numbers_match_and_shuffled_do_not(shared, math_pool):
    rows = _read(shared / "data" / "gsm8k" / "test.jsonl")
    golds = [r["answer"] for r in rows]
    own = math_pool.score(golds, {"answer": golds})  # the worked solution, ending in "#### N", against itself
    assert own.values[0] == [1.0] * len(rows)
    tagged = [f"<answer>{g.rsplit('####', 1)[1].strip()}</answer>" for g in golds]  # "1,600" kept in the tag
    assert math_pool.score(tagged, {"answer": golds}).values[0] == [1.0] * len(rows)
    order = _shuffled(len(rows))
    shuffled = math_pool.score([golds[j] for j in order], {"answer": golds}).values[0]
    assert sum(shuffled) / len(rows) < 0.02  # only rows whose answers happen to be equal


def test_math_solutions_match_their_answers(shared, math_pool):
    rows = _read(shared / "data" / "math" / "test_subset500.jsonl")
    golds = [r["answer"] for r in rows]
    scores = math_pool.score([r["solution"] for r in rows], {"answer": golds})
    disagree = [
        (r["unique_id"], r["answer"], s, m)
        for r, s, m in zip(rows, scores.values[0], scores.messages[0], strict=True)
        if s != 1.0
    ]
    assert len(disagree) <= 0.01 * len(rows), disagree
    order = _shuffled(len(rows))
    shuffled = math_pool.score([rows[j]["solution"] for j in order], {"answer": golds}).values[0]
    matches = [(rows[i]["answer"], rows[j]["answer"]) for i, j in enumerate(order) if shuffled[i] == 1.0]
    assert len(matches) <= 0.02 * len(rows), matches


def test_pathological_input_costs_at_most_the_timeout():
    runner = RewardRunner(["accuracy"], num_workers=1, timeout=2.0)
    try:
        runner.score(["<answer>1</answer>"], {"answer": ["1"]})  # start the worker outside the timing
        start = time.monotonic()
        # without a timeout, comparing 10^(10^10) with 1000 does not end in 20 s (a 10-billion-digit integer)
        scores = runner.score([r"the answer is \boxed{10^{10^{10}}}"], {"answer": ["1000"]})
        assert time.monotonic() - start < 2.0 + 1.5
        assert scores.status[0] == ["timeout"] and scores.values[0] == [0.0]
        assert runner.score(["<answer>2</answer>"], {"answer": ["2"]}).values[0] == [1.0]  # the pool still works
    finally:
        runner.close()
