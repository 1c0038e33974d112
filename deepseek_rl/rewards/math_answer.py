"""Math answer equivalence with math-verify: `accuracy`, and `cosine` (correctness scaled by length).

Choices:
- Only the final answer is parsed, never the whole completion. It comes from the first of `sources` that is present
  (default: the last `<answer>` block, else the last `\\boxed{}`/`\\fbox{}` (brace-matched), else the last number).
- The gold `answer` column: GSM8K's "... #### 1,600" is read as the text after the last "####" without thousands
  separators; a worked solution with a `\\boxed{}` (MATH's `solution` column, mapped to `answer`) as its last
  boxed expression; anything else is LaTeX without delimiters (MATH's `\\frac{1}{2}`, `(3,4]`, `\\text{(C)}`,
  "025"), read as `$gold$`, then as `\\boxed{gold}`, then as plain text. A gold answer that parses to nothing
  scores None.
- The answer snippet: with `$`, `\\boxed` or words in it, math-verify's own extraction reads it (it finds
  "the answer is 5"); otherwise it is read as `$snippet$`, so "2,3" is the set {2, 3} as in MATH, not 2.3.
- Comparison: math-verify `verify` on every (gold, prediction) pair of parses, strict (variables matter).
- Timeouts: math-verify's signal timeouts (parse 2 s, verify 3 s) run in the main thread of a worker process, and
  a timeout raises TimeoutError (counted as a timeout, not a silent 0). Off the main thread signals cannot be used,
  so they are off, and the caller's process timeout bounds the call.
"""

from __future__ import annotations

import math
import re
import threading
from functools import lru_cache
from typing import Any

ANSWER_BLOCK_RE = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)
BOXED_RE = re.compile(r"\\(?:boxed|fbox)\b")
# A number, not glued to a word before it nor an ordinal: "-12", "1,600", "3.25", "3/4", not "x2" or "3rd"
# (a minus only where it is not "5-3").
NUMBER_RE = re.compile(r"(?:(?<![\w)\]}])-)?(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?(?!\d|st\b|nd\b|rd\b|th\b)")
# LaTeX commands with an optional one-word argument (\\begin{pmatrix}, \\text{cm}), dropped before looking for words.
COMMAND_RE = re.compile(r"\\[A-Za-z]+(?:\{[A-Za-z*]*\})?")
WORD_RE = re.compile(r"\b[A-Za-z]{3,}\b")
SOURCES = ("answer", "boxed", "number")
PARSE_TIMEOUT, VERIFY_TIMEOUT = 2, 3


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox`, or `\\boxed 5`), braces matched.

    >>> last_boxed(r"so \\boxed{1} or rather $\\boxed{\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'
    >>> last_boxed(r"\\boxed 7") is None, last_boxed("none") is None
    (False, True)
    """
    matches = list(BOXED_RE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :].lstrip()
    if not rest.startswith("{"):
        token = re.match(r"[^\s$]+", rest)
        return token.group(0) if token else None
    depth = 0
    for i, char in enumerate(rest):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return rest[1:i]
    return None


def last_number(text: str) -> str | None:
    """The last number in the text, thousands separators removed.

    >>> last_number("5-3=2 apples, then 1,600 pears; pages 10-12"), last_number("10 m after the 3rd turn")
    ('12', '10')
    >>> last_number("#### -7"), last_number("none")
    ('-7', None)
    """
    found = NUMBER_RE.findall(text)
    return found[-1].replace(",", "") if found else None


def extract_answer(completion: str, sources: tuple[str, ...] | list[str] = SOURCES) -> tuple[str, str] | None:
    """(source, snippet) of the final answer: the first of `sources` present in the completion.

    >>> extract_answer("<think>2+2</think><answer>4</answer>"), extract_answer(r"so \\boxed{4}. Check: 2+2=4")
    (('answer', '4'), ('boxed', '4'))
    """
    for source in sources:
        if source == "answer":
            blocks = ANSWER_BLOCK_RE.findall(completion)
            snippet = blocks[-1].strip() if blocks else None
        elif source == "boxed":
            snippet = last_boxed(completion)
        elif source == "number":
            snippet = last_number(completion)
        else:
            raise ValueError(f"unknown answer source '{source}': use {', '.join(SOURCES)}")
        if snippet:
            return source, snippet
    return None


def gold_text(gold: Any) -> str:
    """The gold answer as text: GSM8K's part after "####" without thousands separators, a solution's last boxed
    expression, else the text stripped.

    >>> gold_text("Natalia sold 48/2 = <<48/2=24>>24 clips.\\n#### 1,600"), gold_text(" 025 "), gold_text(7)
    ('1600', '025', '7')
    >>> gold_text(r"So $x = \\boxed{\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'
    """
    text = str(gold).strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip().replace(",", "")
    elif BOXED_RE.search(text):
        text = last_boxed(text) or text
    return text


def _timeouts() -> tuple[int | None, int | None]:
    if threading.current_thread() is threading.main_thread():
        return PARSE_TIMEOUT, VERIFY_TIMEOUT
    return None, None


def _parse(text: str) -> list:
    """math-verify parses of `text`; [] when nothing parses; TimeoutError on a parse timeout."""
    from math_verify import parse
    from math_verify.errors import TimeoutException

    try:
        return parse(text, parsing_timeout=_timeouts()[0], raise_on_error=True)
    except TimeoutException as err:
        raise TimeoutError(f"math-verify timed out parsing {text[:80]!r}") from err
    except Exception:  # noqa: BLE001 - an unparseable answer is a wrong answer, not an error
        return []


def _has_expression(parsed: list) -> bool:
    return any(not isinstance(p, str) for p in parsed)


@lru_cache(maxsize=4096)
def parse_gold(gold: str) -> tuple | None:
    """Parses of a gold answer text, or None when no reading gives a mathematical expression."""
    for candidate in (f"${gold}$", f"\\boxed{{{gold}}}", gold) if gold else ():
        parsed = _parse(candidate)
        if _has_expression(parsed):
            return tuple(parsed)
    return None


def parse_prediction(snippet: str) -> list:
    if "$" in snippet or "\\boxed" in snippet or WORD_RE.search(COMMAND_RE.sub(" ", snippet)):
        first, second = snippet, f"${snippet}$"
    else:
        first, second = f"${snippet}$", snippet
    parsed = _parse(first)
    return parsed if _has_expression(parsed) else parsed + _parse(second)


def equivalent(gold: tuple, prediction: list) -> bool:
    """math-verify's verdict on any (gold, prediction) pair; TimeoutError when a comparison times out."""
    from math_verify import verify
    from math_verify.errors import TimeoutException

    timeout = _timeouts()[1]
    for g in gold:
        for p in prediction:
            try:
                if verify(g, p, timeout_seconds=timeout, raise_on_error=True):
                    return True
            except TimeoutException as err:
                raise TimeoutError("math-verify timed out comparing answers") from err
            except Exception:  # noqa: BLE001 - an incomparable pair is not a match
                continue
    return False


def correctness(completion: str, gold: Any, sources: tuple[str, ...] | list[str] = SOURCES) -> float | None:
    """1.0 / 0.0 for one completion against one gold answer; None when the gold answer does not parse."""
    if gold is None:
        return None
    parsed_gold = parse_gold(gold_text(gold))
    if parsed_gold is None:
        return None
    found = extract_answer(completion, sources)
    if found is None:
        return 0.0
    return float(equivalent(parsed_gold, parse_prediction(found[1])))


def accuracy(
    completions: list[str], answer: list[Any] | None = None, sources: list[str] | None = None, **kwargs: Any
) -> list[float | None]:
    """1.0 when the final answer is mathematically equivalent to the gold `answer` (see the module docstring).

    >>> accuracy([r"<answer>\\frac{1}{2}</answer>", r"so \\boxed{0.5}", "it is 1,600", "<answer>3</answer>", "x"],
    ...          answer=["0.5", r"\\frac12", "#### 1,600", "3", r"\\frac{"])
    [1.0, 1.0, 1.0, 1.0, None]
    """
    if answer is None:
        return [None] * len(completions)
    order = tuple(sources or SOURCES)
    return [correctness(c, g, order) for c, g in zip(completions, answer, strict=True)]


def warm_up() -> None:
    """Import math-verify and run it once (about 0.6 s), so that a worker's first task is not slow."""
    equivalent(parse_gold("1"), parse_prediction("1"))


def length_of(completion: str, ids: Any) -> int:
    """Tokens when the trainer passed `completion_ids` (unpadded), else characters."""
    return len(ids) if ids is not None else len(completion)


def cosine_scaled(correct: bool, length: int, max_length: int, correct_range=(0.5, 1.0), wrong_range=(-1.0, -0.5)):
    """Cosine interpolation from the short end to the long end of a range (Yeo et al. 2025, "Demystifying Long CoT").

    Correct answers: max at length 0 down to min at max_length (shorter is better). Wrong answers: min at length 0 up
    to max at max_length (a long wrong attempt is penalised less than a short guess).

    >>> [cosine_scaled(True, n, 100) for n in (0, 100)], [cosine_scaled(False, n, 100) for n in (0, 50)]
    ([1.0, 0.5], [-1.0, -0.75])
    """
    low, high = correct_range if correct else (wrong_range[1], wrong_range[0])
    progress = min(length, max_length) / max_length
    return low + 0.5 * (high - low) * (1.0 + math.cos(math.pi * progress))


def cosine(
    completions: list[str],
    answer: list[Any] | None = None,
    completion_ids: list[Any] | None = None,
    max_completion_length: int = 1024,
    sources: list[str] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """`accuracy` scaled by length with `cosine_scaled` (lengths in tokens from `completion_ids`, else characters).

    >>> cosine(["<answer>4</answer>", "<answer>5</answer>"], answer=["4", "4"], max_completion_length=18)
    [0.5, -0.5]
    """
    correct = accuracy(completions, answer, sources)
    ids = completion_ids if completion_ids is not None else [None] * len(completions)
    return [
        None if ok is None else cosine_scaled(bool(ok), length_of(c, i), max_completion_length)
        for c, i, ok in zip(completions, ids, correct, strict=True)
    ]


accuracy.warm_up = warm_up
cosine.warm_up = warm_up
