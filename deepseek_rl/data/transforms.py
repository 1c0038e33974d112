"""Row transforms: `transform(row: dict) -> dict`, applied to every row of a split after the column renames.

They turn a dataset's own format into the columns the stages read, e.g. GSM8K's worked answers into R1-style
`<think>` traces for a cold start. `data.transform` names one from `TRANSFORMS` or gives your own as
"module:function" (the module importable from the working directory).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from deepseek_rl.errors import ConfigError, DataError

Row = dict[str, Any]
CALCULATOR_RE = re.compile(r"<<[^>]*>>")


def gsm8k_r1_trace(row: Row) -> Row:
    """GSM8K's worked `answer` ("... <<48/2=24>>24 ...\\n#### 72") -> a `solution` in DeepSeek-R1's format: the
    steps inside a think block (calculator annotations removed), then the final answer boxed; `answer` is kept.

    >>> gsm8k_r1_trace({"answer": "Half is 48/2 = <<48/2=24>>24.\\n#### 24"})["solution"]
    '<think>\\nHalf is 48/2 = 24.\\n</think>\\n\\nThe answer is \\\\boxed{24}.'
    """
    steps, _, final = str(row["answer"]).rpartition("####")
    reasoning = CALCULATOR_RE.sub("", steps).strip()
    number = final.strip().replace(",", "")
    return {**row, "solution": f"<think>\n{reasoning}\n</think>\n\nThe answer is \\boxed{{{number}}}."}


TRANSFORMS: dict[str, Callable[[Row], Row]] = {"gsm8k_r1_trace": gsm8k_r1_trace}


def resolve_transform(name: str) -> Callable[[Row], Row]:
    """The transform called `name` in the table, or the function at "module:function"."""
    if name in TRANSFORMS:
        return TRANSFORMS[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            func = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"data.transform={name}: cannot import '{attr}' from '{module_name}' ({err})") from err
        if callable(func):
            return func
    raise ConfigError(
        f"data.transform={name}: not a known transform ({', '.join(sorted(TRANSFORMS))}) nor a 'module:function'"
    )


def apply_transform(dataset: Any, name: str, source: str) -> Any:
    """`dataset` with the transform applied to every row; an exception names the 1-based row."""
    func = resolve_transform(name)

    def checked(row: Row, index: int) -> Row:
        try:
            return func(dict(row))
        except Exception as err:
            raise DataError(
                f"{source}, row {index + 1}: data.transform={name} failed ({type(err).__name__}: {err})"
            ) from err

    return dataset.map(checked, with_indices=True, load_from_cache_file=False)
