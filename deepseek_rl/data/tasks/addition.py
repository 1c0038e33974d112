"""Multi-digit addition with a carry-by-carry chain of thought.

Prompt `Q:526+850=`; solution `<think>6+0+0=06 2+5+0=07 5+8+0=13</think><answer>1376</answer>`: each step adds
one column's digits and the incoming carry and writes the two-digit column sum (carry, digit), right to left.
The verifier compares the `<answer>` block with the gold sum exactly.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def addition_prompt(a: int, b: int) -> str:
    return f"Q:{a}+{b}="


def addition_solution(a: int, b: int) -> str:
    """The carry-by-carry trace for a + b (numbers of any digit count)."""
    da, db = str(a)[::-1], str(b)[::-1]
    carry, steps = 0, []
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        column = x + y + carry
        steps.append(f"{x}+{y}+{carry}={column:02d}")
        carry = column // 10
    return f"<think>{' '.join(steps)}</think><answer>{a + b}</answer>"


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

    def splits(self, num_train: int, num_validation: int, num_eval: int) -> dict[str, list[dict[str, str]]]:
        lo, hi = 10 ** (self.num_digits - 1) if self.num_digits > 1 else 0, 10**self.num_digits - 1
        space, total = (hi - lo + 1) ** 2, num_train + num_validation + num_eval
        if total > space:
            raise ValueError(
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
        rows = [self.row(a, b) for a, b in pairs]
        cut = num_eval + num_validation
        return {"eval": rows[:num_eval], "validation": rows[num_eval:cut], "train": rows[cut:]}

    @staticmethod
    def row(a: int, b: int) -> dict[str, str]:
        return {"prompt": addition_prompt(a, b), "answer": str(a + b), "solution": addition_solution(a, b)}
