"""`code` and `binary_code`: block extraction, test forms, setup order, and all of MBPP through the worker pool."""

import json

import pytest

from deepseek_rl.rewards.coding import binary_code, code, last_python_block
from deepseek_rl.rewards.runner import RewardRunner

DOUBLE = "```python\ndef double(x):\n    return 2 * x\n```"


def test_last_python_block():
    text = "Plan:\n```python\nx = 1\n```\nRun it:\n```bash\npython a.py\n```\nFinal:\n```py\nx = 2\n```\n"
    assert last_python_block(text) == "x = 2\n"
    assert last_python_block("```\nbare = True\n```") == "bare = True\n"
    assert last_python_block("```python\nunterminated = 1\n") is None
    assert last_python_block("no code here") is None


def test_fraction_of_tests_passed():
    tests = ["assert double(1) == 2", "assert double(2) == 4", "assert double(3) == 7"]
    assert code([DOUBLE], tests=[tests]) == [pytest.approx(2 / 3)]
    assert binary_code([DOUBLE], tests=[tests]) == [0.0]
    assert binary_code([DOUBLE], tests=[tests[:2]]) == [1.0]


def test_tests_as_a_python_string():
    # two top-level asserts are two tests; the import between them is a statement they rely on
    tests = "assert double(1) == 2\nimport math\nassert double(math.pi) == 2 * math.pi\nassert double(0) == 1"
    assert code([DOUBLE], tests=[tests]) == [pytest.approx(2 / 3)]
    # without a top-level assert the whole string is one test
    check = "def check(f):\n    assert f(3) == 6\n    assert f(-1) == -2\n\ncheck(double)"
    assert code([DOUBLE], tests=[check]) == [1.0]


def test_setup_runs_after_the_solution():
    solution = (
        "```python\nclass Node:\n    def __init__(self, v):\n        self.v = v\n\ndef value(n):\n    return n.v\n```"
    )
    assert code([solution], tests=[["assert value(root) == 7"]], setup=["root = Node(7)"]) == [1.0]


def test_scores_without_code_or_tests():
    tests = [["assert double(1) == 2"]]
    assert code(["def double(x): return 2 * x"], tests=tests) == [0.0]  # not in a fenced block
    assert code(["```python\n```"], tests=tests) == [0.0]  # empty block
    assert code(["```python\ndef double(x) return\n```"], tests=tests) == [0.0]  # syntax error
    assert code([DOUBLE], tests=[[]]) == [None]  # no tests: cannot be scored
    assert code([DOUBLE]) == [None]
    assert code([DOUBLE], tests=["assert double(1) == "]) == [None]  # the row's tests do not parse


def _mbpp(shared):
    return [json.loads(line) for line in (shared / "data" / "mbpp" / "mbpp.jsonl").read_text().splitlines()]


def test_all_mbpp_reference_solutions_pass(shared):
    rows = _mbpp(shared)
    assert len(rows) == 974
    completions = [f"Here is my solution.\n```python\n{r['code']}\n```" for r in rows]
    columns = {"tests": [r["test_list"] for r in rows], "setup": [r["test_setup_code"] for r in rows]}
    runner = RewardRunner(["code"], num_workers=2, timeout=20.0)
    try:
        scores = runner.score(completions, columns)
    finally:
        runner.close()
    failed = [
        (r["task_id"], s, m) for r, s, m in zip(rows, scores.values[0], scores.messages[0], strict=True) if s != 1.0
    ]
    assert failed == []


def test_mbpp_empty_and_wrong_solutions_score_zero(shared):
    rows = _mbpp(shared)[10:40]
    columns = {"tests": [r["test_list"] for r in rows], "setup": [r["test_setup_code"] for r in rows]}
    # another task's reference solution defines other functions: every test fails
    wrong = [f"```python\n{rows[(i + 1) % len(rows)]['code']}\n```" for i in range(len(rows))]
    assert code(wrong, **columns) == [0.0] * len(rows)
    assert code(["```python\npass\n```"] * len(rows), **columns) == [0.0] * len(rows)
    assert code([""] * len(rows), **columns) == [0.0] * len(rows)
