"""The data group's config: where prompts come from (procedural task, local file, Hub dataset), which rows and
splits, and how prompts are built and rendered."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from deepseek_rl.config.checks import check_data_selection, one_of, require
from deepseek_rl.errors import ConfigError
from deepseek_rl.hub import shared_hint


@dataclass
class DataConfig:
    # A procedural task name (no download needed), or null to read prompts from `path`.
    task: str | None = "addition"
    # A local .jsonl/.json/.parquet file (read with `datasets`), used when task is null.
    path: str | None = None
    # Or a Hugging Face Hub dataset (or local dataset folder), read with datasets.load_dataset(hub_name, hub_subset,
    # split=...) instead of `path`: needs network or the local HF cache (e.g. hub_name=openai/gsm8k hub_subset=main).
    hub_name: str | None = None
    hub_subset: str | None = None
    # The split of each purpose in `datasets` syntax ("train", "test", "train+validation", "train[:400]"); a local
    # file is one split named "train" (slice it to hold rows out). Evaluation reads eval_path when set (the whole
    # file unless eval_split slices it), else the training source's eval_split (null: no held-out split);
    # validation likewise.
    train_split: str = "train"
    eval_split: str | None = None
    validation_split: str | None = None
    # Keep only rows whose column lies in [min, max] (inclusive), per split (train, eval, validation), after the
    # `columns` renames, e.g. MBPP's {train: {task_id: [511, 974]}, eval: {task_id: [11, 510]}}.
    filters: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    # Build the prompt text from the row's columns with str.format (lists joined by newlines), e.g.
    # "{text}\nYour code should pass these tests:\n{tests}"; null: the prompt_column text as is.
    prompt_template: str | None = None
    # Column holding the prompt text (after `columns` renames).
    prompt_column: str = "prompt"
    # Renames applied on load, {dataset column: name the rewards expect}, e.g. {question: prompt}.
    columns: dict[str, str] = field(default_factory=dict)
    # A row transform applied after the renames (row dict -> row dict): a name from deepseek_rl.data.transforms
    # (e.g. gsm8k_r1_trace: GSM8K's worked answers as R1 <think> traces in `solution`) or "module:function".
    transform: str | None = None
    # plain: the prompt as is; r1_zero: DeepSeek-R1-Zero's "think then answer" template; chat: the tokenizer's template.
    template: str = "plain"
    system_prompt: str | None = None
    # Use at most this many rows (null: all).
    max_rows: int | None = None
    # Drop rows whose rendered prompt is longer than rollout.max_prompt_length (counted and reported) instead of
    # stopping with an error naming the row.
    drop_long_prompts: bool = False
    # Column naming each row's source or task in a mixed dataset (null: none); rewards, accuracy and lengths are
    # then also logged per value, as source/<value>/... metrics.
    source_column: str | None = None
    # Held-out files for evaluation and for the SFT stop rule (read like `path`; null: none).
    eval_path: str | None = None
    validation_path: str | None = None
    # Procedural task settings: problems generated for training, validation (SFT stop rule) and held-out
    # evaluation (three disjoint splits), and the task's seed.
    num_train: int = 5000
    num_validation: int = 200
    num_eval: int = 500
    num_digits: int = 3
    task_seed: int = 1234
    # The task's own settings, e.g. addition's {teacher_error: 0.7} (an unreliable teacher: the chance that a worked
    # solution drops a carry) or multiplication's {tool_share: 0.2} (demonstrations that call the Python tool).
    task_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from deepseek_rl.data.tasks import TASKS

        one_of("data.template", self.template, ("plain", "r1_zero", "chat"))
        if self.task is not None:
            one_of("data.task", self.task, tuple(TASKS))
            require(self.num_digits >= 1, f"data.num_digits={self.num_digits} must be >= 1")
            require(self.num_train >= 1, f"data.num_train={self.num_train} must be >= 1")
            known = [f.name for f in fields(TASKS[self.task]) if f.name not in ("num_digits", "seed")]
            for key in self.task_args:
                require(key in known, f"data.task_args.{key}: task '{self.task}' takes {known or 'no arguments'}")
            try:  # the task checks its own values
                TASKS[self.task](num_digits=self.num_digits, seed=self.task_seed, **self.task_args)
            except ValueError as err:
                raise ConfigError(str(err)) from err
        else:
            require(
                (self.path is None) != (self.hub_name is None),
                "data.task=null needs exactly one of data.path (a .jsonl or .parquet file) and data.hub_name "
                f"(a Hugging Face dataset); got path={self.path}, hub_name={self.hub_name}",
            )
        check_data_selection(self.filters, self.prompt_template)
        if self.transform is not None:
            from deepseek_rl.data.transforms import resolve_transform

            resolve_transform(self.transform)
        for key in ("path", "eval_path", "validation_path"):
            value = getattr(self, key)
            if value is not None and (self.task is None or key != "path"):
                path = Path(os.path.expanduser(value))
                require(
                    path.exists(),
                    f"data.{key}={value}: no such file (resolved to {path.absolute()}); "
                    "give a local .jsonl/.json/.parquet file, or set data.task to a procedural task"
                    + shared_hint(str(path)),
                )
