"""Text-only rewards: exact answer match for procedural tasks, the think/answer format (strict and lenient), tag
counting and reasoning-step counting. All are linear-time regular expressions, so they run in the trainer process.

The R1 chat template (and the R1-Zero template) already opens `<think>` in the prompt, so a completion may start
inside the think block. When the prompt ends with `<think>`, the completion is read as if it started with it;
without prompts (e.g. offline scoring) a missing opening `<think>` is accepted when the completion closes one.
"""

from __future__ import annotations

import re
from typing import Any

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
STRICT_FORMAT_RE = re.compile(
    r"^<think>(?:(?!<think>|</think>).)*</think>\s*<answer>(?:(?!<answer>|</answer>).)*</answer>\s*$", re.DOTALL
)
LENIENT_FORMAT_RE = re.compile(r"<think>.*?</think>.*?<answer>.*?</answer>", re.DOTALL)
# One closed think block, then a final answer (any text with something in it) and no further think tags.
THINK_FORMAT_RE = re.compile(r"^<think>(?:(?!</?think>).)*</think>((?:(?!</?think>).)*)$", re.DOTALL)
# A line that starts a step: "Step 2:", "2.", "2)", "- ", "* ", or a sequencing word.
STEP_RE = re.compile(
    r"^\s*(?:step\s*\d+\s*[:.)]|\d+\s*[.)]\s|[-*]\s|(?:first|second|third|next|then|finally)\b,?)",
    re.IGNORECASE | re.MULTILINE,
)


def with_opened_think(completion: str, prompt: str | None) -> str:
    """The completion as if it began with `<think>` when the prompt already opened it.

    Without the prompt, a completion that closes a think block it never opened is read as opened by the prompt.
    """
    if completion.lstrip().startswith("<think>"):
        return completion.lstrip()
    if prompt is not None:
        opened = prompt.rstrip().endswith("<think>")
    else:
        opened = "</think>" in completion and "<think>" not in completion
    return "<think>" + completion if opened else completion


def _prompts(n: int, kwargs: dict[str, Any]) -> list[str | None]:
    prompts = kwargs.get("prompts")
    return list(prompts) if prompts is not None else [None] * n


def answer_match(completions: list[str], answer: list[Any] | None = None, **kwargs: Any) -> list[float | None]:
    """1.0 when the last `<answer>...</answer>` block equals the gold `answer` column exactly (after stripping).

    >>> answer_match(["<think>..</think><answer> 42 </answer>", "<answer>41</answer>", "42"], answer=["42"] * 3)
    [1.0, 0.0, 0.0]
    """
    if answer is None:
        return [None] * len(completions)
    scores: list[float | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        if gold is None or str(gold).strip() == "":
            scores.append(None)
            continue
        found = ANSWER_RE.findall(completion)
        scores.append(float(bool(found) and found[-1].strip() == str(gold).strip()))
    return scores


def format_reward(completions: list[str], **kwargs: Any) -> list[float | None]:
    """1.0 for exactly `<think>...</think><answer>...</answer>`, nothing after (the prompt may open `<think>`).

    >>> format_reward(["<think>a</think><answer>1</answer>", "a</think><answer>1</answer>", "<answer>1</answer>"])
    [1.0, 1.0, 0.0]
    """
    prompts = _prompts(len(completions), kwargs)
    return [
        float(bool(STRICT_FORMAT_RE.match(with_opened_think(c, p)))) for c, p in zip(completions, prompts, strict=True)
    ]


def tag_count(completions: list[str], **kwargs: Any) -> list[float | None]:
    """0.25 for each of `<think>`, `</think>`, `<answer>`, `</answer>` that appears exactly once (partial credit).

    >>> tag_count(["<think>x</think><answer>1</answer>", "</think></think>", "plain text"])
    [1.0, 0.25, 0.0]
    """
    prompts = _prompts(len(completions), kwargs)
    scores: list[float | None] = []
    for completion, prompt in zip(completions, prompts, strict=True):
        text = with_opened_think(completion, prompt)
        scores.append(
            sum((0.25 for tag in ("<think>", "</think>", "<answer>", "</answer>") if text.count(tag) == 1), 0.0)
        )
    return scores


def think_format(completions: list[str], **kwargs: Any) -> list[float | None]:
    """1.0 for one closed `<think>` block followed by a non-empty answer and nothing else think-tagged: the native
    output of DeepSeek-R1 and its distilled models (the prompt may open `<think>`; no `<answer>` tags needed).

    >>> think_format(["<think>2+2</think>\\n\\n**4**", "2+2\\n</think>\\nIt is 4.", "<think>2+2</think>  ", "4"])
    [1.0, 1.0, 0.0, 0.0]
    """
    prompts = _prompts(len(completions), kwargs)
    scores: list[float | None] = []
    for completion, prompt in zip(completions, prompts, strict=True):
        found = THINK_FORMAT_RE.match(with_opened_think(completion, prompt).rstrip())
        scores.append(float(found is not None and found.group(1).strip() != ""))
    return scores


def format_lenient(completions: list[str], **kwargs: Any) -> list[float | None]:
    """1.0 when a think block is followed by an answer block anywhere, whatever surrounds or repeats them.

    >>> format_lenient(["Hi <think>a</think> so <answer>1</answer> bye", "a</think><answer>1</answer>", "<answer>"])
    [1.0, 1.0, 0.0]
    """
    prompts = _prompts(len(completions), kwargs)
    return [
        float(bool(LENIENT_FORMAT_RE.search(with_opened_think(c, p))))
        for c, p in zip(completions, prompts, strict=True)
    ]


def reasoning_steps(completions: list[str], expected_steps: int = 3, **kwargs: Any) -> list[float | None]:
    """Share of `expected_steps` step markers found (numbered or bulleted lines, "Step k:", "First,", ...), at most 1.

    >>> reasoning_steps(["Step 1: add.\\nStep 2: carry.\\nFinally, done.", "1. a\\n2. b", "just an answer"])
    [1.0, 0.6666666666666666, 0.0]
    """
    return [min(1.0, len(STEP_RE.findall(c)) / expected_steps) for c in completions]
