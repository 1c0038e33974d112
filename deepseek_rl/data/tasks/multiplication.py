"""Multiplication of large numbers: hard in the head for a small model, trivial in Python (the tool demo).

Prompt `Q:4821*7369=`; gold answer the product. The worked solutions (cold-start demonstrations) come in two kinds:
a share `tool_share` call the Python tool, the rest state the product without any work, which a small model cannot
imitate (it learns the format and guesses digits):

    <think>```python\\nprint(4821*7369)\\n```\\n```output\\n35525949\\n```\\n</think><answer>35525949</answer>
    <think></think><answer>35525949</answer>

In a tool demonstration the text after "```output" up to the closing fence is what the sandbox prints: during
rollouts the environment writes it, and fine-tuning does not train on it (data/examples.py). The verifier is the
same exact `<answer>` match as addition's (`answer_match`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from deepseek_rl.errors import ConfigError

TOOL_CALL = "```python\nprint({a}*{b})\n```\n```output\n{product}\n```\n"


def multiplication_solution(a: int, b: int, tool: bool) -> str:
    """The demonstration for a * b, with or without the tool call.

    >>> multiplication_solution(12, 34, tool=True)
    '<think>```python\\nprint(12*34)\\n```\\n```output\\n408\\n```\\n</think><answer>408</answer>'
    >>> multiplication_solution(12, 34, tool=False)
    '<think></think><answer>408</answer>'
    """
    work = TOOL_CALL.format(a=a, b=b, product=a * b) if tool else ""
    return f"<think>{work}</think><answer>{a * b}</answer>"


@dataclass
class MultiplicationTask:
    """`num_digits` x `num_digits`-digit products in three disjoint splits (eval drawn first, then validation,
    then train), like AdditionTask; `tool_share` of the demonstrations use the tool."""

    num_digits: int = 4
    seed: int = 1234
    tool_share: float = 0.2

    def __post_init__(self) -> None:
        if not 0 <= self.tool_share <= 1:
            raise ConfigError(f"data.task_args.tool_share={self.tool_share} must be in [0, 1]")

    def splits(self, num_train: int, num_validation: int, num_eval: int) -> dict[str, list[dict[str, str]]]:
        lo, hi = 10 ** (self.num_digits - 1), 10**self.num_digits - 1
        rng, seen, rows = random.Random(self.seed), set(), []
        total = num_train + num_validation + num_eval
        if total > (hi - lo + 1) ** 2:
            raise ConfigError(
                f"data.num_train + num_validation + num_eval = {total} exceeds the distinct {self.num_digits}-digit "
                "products: lower them or raise data.num_digits"
            )
        teacher = random.Random(self.seed + 1)
        while len(rows) < total:
            a, b = rng.randint(lo, hi), rng.randint(lo, hi)
            if (a, b) in seen:
                continue
            seen.add((a, b))
            solution = multiplication_solution(a, b, teacher.random() < self.tool_share)
            rows.append({"prompt": f"Q:{a}*{b}=", "answer": str(a * b), "solution": solution})
        cut = num_eval + num_validation
        return {"eval": rows[:num_eval], "validation": rows[num_eval:cut], "train": rows[cut:]}
