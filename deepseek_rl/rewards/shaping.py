"""Shaping rewards that look at the completion's length and text, not its correctness.

- `soft_overlong`: DAPO's overlong reward shaping (Yu et al. 2025): 0 up to max_completion_length - buffer_length,
  then a linear penalty down to -1 at max_completion_length, and -1 beyond.
- `repetition`: the n-gram repetition penalty of "Demystifying Long CoT" (Yeo et al. 2025): the share of repeated
  word n-grams, times a negative `max_penalty`.
- `language_consistency`: DeepSeek-R1's language consistency reward, the share of the chain of thought's words that
  are in the target language (en: Latin-alphabet words; zh: Han characters, each one a word).

Lengths are tokens when the trainer passes `completion_ids` (unpadded, as TRL does), else characters, so offline
scoring of text still works with lengths given in characters. Everything here is linear in the text length and runs
in the trainer process.
"""

from __future__ import annotations

import re
from typing import Any

from deepseek_rl.rewards.basic import with_opened_think
from deepseek_rl.rewards.math_answer import length_of

THINK_RE = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# A Han character alone, or a run of letters of any other script (digits and underscores excluded).
WORD_RE = re.compile(rf"[{HAN}]|[^\W\d_{HAN}]+")
LATIN_RE = re.compile(r"[A-Za-z]+")


def overlong_penalty(length: int, max_length: int, buffer_length: int) -> float:
    """DAPO's soft overlong punishment for one length.

    >>> [overlong_penalty(n, 100, 20) for n in (80, 90, 100, 120)]
    [0.0, -0.5, -1.0, -1.0]
    """
    free = max_length - buffer_length
    if length <= free:
        return 0.0
    if length <= max_length:
        return (free - length) / buffer_length
    return -1.0


def soft_overlong(
    completions: list[str],
    completion_ids: list[Any] | None = None,
    max_completion_length: int = 1024,
    buffer_length: int | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """`overlong_penalty` of each completion; `buffer_length` defaults to a fifth of max_completion_length.

    >>> soft_overlong(["a" * 5, "b" * 9], completion_ids=[[1] * 5, [1] * 9], max_completion_length=10, buffer_length=4)
    [0.0, -0.75]
    """
    buffer = buffer_length if buffer_length is not None else max(1, max_completion_length // 5)
    ids = completion_ids if completion_ids is not None else [None] * len(completions)
    return [
        overlong_penalty(length_of(c, i), max_completion_length, buffer) for c, i in zip(completions, ids, strict=True)
    ]


def repetition(
    completions: list[str], ngram_size: int = 3, max_penalty: float = -1.0, **kwargs: Any
) -> list[float | None]:
    """max_penalty x (1 - distinct n-grams / n-grams) over lower-cased words; 0 when there are fewer than n words.

    "a b c a b c": 3-grams abc, bca, cab, abc -> 1 - 3/4 = 0.25 of the penalty.

    >>> repetition(["a b c a b c", "one two three four", "too short"])
    [-0.25, 0.0, 0.0]
    """
    if max_penalty > 0:
        raise ValueError(f"repetition: max_penalty={max_penalty} must be <= 0")
    scores: list[float | None] = []
    for completion in completions:
        words = completion.lower().split()
        if len(words) < ngram_size:
            scores.append(0.0)
            continue
        ngrams = list(zip(*(words[i:] for i in range(ngram_size)), strict=False))
        scores.append((1.0 - len(set(ngrams)) / len(ngrams)) * max_penalty + 0.0)  # + 0.0: no -0.0
    return scores


def chain_of_thought(completion: str, prompt: str | None) -> str:
    """The think block's text (the prompt may have opened it); the whole completion when there is none."""
    found = THINK_RE.findall(with_opened_think(completion, prompt))
    return found[-1] if found else completion


def target_share(text: str, language: str) -> float | None:
    """Share of the words in `language`; None without any word.

    >>> target_share("so the 答案 is 2", "en"), target_share("答案是 two", "zh"), target_share("1 + 1", "en")
    (0.6, 0.75, None)
    """
    words = WORD_RE.findall(text)
    if not words:
        return None
    if language == "en":
        hits = sum(bool(LATIN_RE.fullmatch(w)) for w in words)
    elif language == "zh":
        hits = sum(len(w) == 1 and re.fullmatch(f"[{HAN}]", w) is not None for w in words)
    else:
        raise ValueError(f"language_consistency: language='{language}' is not supported (en, zh)")
    return hits / len(words)


def language_consistency(
    completions: list[str], language: str = "en", prompts: list[str] | None = None, **kwargs: Any
) -> list[float | None]:
    """Share of the chain of thought's words in the target `language`; None when it has no words.

    >>> language_consistency(["<think>so the sum is 4</think><answer>4</answer>", "<think>和 is 4</think>"])
    [1.0, 0.5]
    """
    prompts = prompts if prompts is not None else [None] * len(completions)
    return [target_share(chain_of_thought(c, p), language) for c, p in zip(completions, prompts, strict=True)]
