"""Multi-digit addition with a carry-by-carry chain of thought.

Prompt `Q:526+850=`; solution `<think>6+0+0=06 2+5+0=07 5+8+0=13</think><answer>1376</answer>`: each step adds
one column's digits and the incoming carry and writes the two-digit column sum (carry, digit), right to left.
The verifier compares the `<answer>` block with the gold sum exactly.

An unreliable teacher (`teacher_error` > 0): the worked solutions (the cold-start demonstrations) drop the carry out
of a column whose sum is 10 or 11 with that probability, writing `9+1+0=00` and carrying 0 on, so the trace stays
self-consistent but its answer is wrong. The gold `answer` is always the true sum: a model that imitates the teacher
learns its bug, while a reward on correct answers does not reward it. About 4 in 10 three-digit problems have such a
column.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from deepseek_rl.errors import ConfigError

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def addition_prompt(a: int, b: int) -> str:
    return f"Q:{a}+{b}="


def addition_solution(a: int, b: int, dropped: frozenset[int] = frozenset()) -> str:
    """The carry-by-carry trace for a + b (numbers of any digit count); in the columns listed in `dropped` (counted
    from the right, 0-based) a sum of 10 or 11 loses its carry, and the answer follows the trace.

    >>> addition_solution(19, 1), addition_solution(19, 1, frozenset({0}))
    ('<think>9+1+0=10 1+0+1=02</think><answer>20</answer>', '<think>9+1+0=00 1+0+0=01</think><answer>10</answer>')
    """
    da, db = str(a)[::-1], str(b)[::-1]
    carry, steps, digits = 0, [], []
    width = max(len(da), len(db))
    for i in range(width):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        column = x + y + carry
        if i in dropped and column in (10, 11):
            column -= 10
        steps.append(f"{x}+{y}+{carry}={column:02d}")
        digits.append(column % 10)
        carry = column // 10
    answer = int(str(carry) + "".join(str(d) for d in reversed(digits)))  # a + b when no carry was dropped
    return f"<think>{' '.join(steps)}</think><answer>{answer}</answer>"


def verify_addition(completion: str, answer: str) -> float:
    """1.0 if the last `<answer>` block holds exactly the gold sum, else 0.0."""
    found = ANSWER_RE.findall(completion)
    return float(bool(found) and found[-1].strip() == str(answer).strip())


@dataclass
class AdditionTask:
    """`num_digits`-digit + `num_digits`-digit problems in three disjoint splits: eval (held out), validation
    (for stop rules) and train; eval problems are drawn first, so they do not change with the other sizes."""

    num_digits: int = 3
    seed: int = 1234
    teacher_error: float = 0.0  # chance that a demonstration drops the carry of a column summing to 10 or 11

    def __post_init__(self) -> None:
        if not 0 <= self.teacher_error <= 1:
            raise ConfigError(f"data.task_args.teacher_error={self.teacher_error} must be in [0, 1]")

    def splits(self, num_train: int, num_validation: int, num_eval: int) -> dict[str, list[dict[str, str]]]:
        lo, hi = 10 ** (self.num_digits - 1) if self.num_digits > 1 else 0, 10**self.num_digits - 1
        space, total = (hi - lo + 1) ** 2, num_train + num_validation + num_eval
        if total > space:
            raise ConfigError(
                f"data.num_train + num_validation + num_eval = {total} exceeds the {space} distinct "
                f"{self.num_digits}-digit problems: lower them or raise data.num_digits"
            )
        rng = random.Random(self.seed)
        seen: set[tuple[int, int]] = set()
        pairs: list[tuple[int, int]] = []
        while len(pairs) < total:
            pair = (rng.randint(lo, hi), rng.randint(lo, hi))
            if pair not in seen:
                seen.add(pair)
                pairs.append(pair)
        teacher = random.Random(self.seed + 1)  # the teacher's mistakes, drawn after the problems
        width = self.num_digits + 1
        rows = [self.row(a, b, {c for c in range(width) if teacher.random() < self.teacher_error}) for a, b in pairs]
        cut = num_eval + num_validation
        return {"eval": rows[:num_eval], "validation": rows[num_eval:cut], "train": rows[cut:]}

    @staticmethod
    def row(a: int, b: int, dropped: set[int] | None = None) -> dict[str, str]:
        solution = addition_solution(a, b, frozenset(dropped or ()))
        return {"prompt": addition_prompt(a, b), "answer": str(a + b), "solution": solution}
