"""Prompt data: procedural tasks, local JSONL/parquet files or Hub datasets -> rendered, tokenized prompts -> batches.

Sources: a split's rows come from its own local file (data.path, eval_path, validation_path), else from a split of
the training source (data.eval_split, e.g. `train[400:]` of a file, or `test` of a Hub dataset), read with
`datasets`; then `columns` renames, the split's `filters` (column ranges) and `max_rows` apply, in that order. The
prompt text is the `prompt_column`, or `prompt_template` formatted with the row's columns.

Rendering: `plain` uses the prompt text as is; `r1_zero` wraps it in DeepSeek-R1-Zero's "think then answer"
template (which ends by opening `<think>`); `chat` applies the tokenizer's chat template with the generation prompt.
Batches are drawn without replacement from a seeded permutation per epoch; step s uses global positions
[s * prompts_per_step, (s + 1) * prompts_per_step) and rank r takes its contiguous share, so a step's prompts
depend only on (seed, step) and resuming needs nothing but the step.
"""

from __future__ import annotations

import os
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from deepseek_rl.batch import PromptBatch
from deepseek_rl.config import ConfigError, DataConfig
from deepseek_rl.sources import load_hub_split
from deepseek_rl.tasks import TASKS

R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: {prompt}. Assistant: <think>"
)


class DataError(ValueError):
    """Bad data: the message names the file (or task), the row and the column."""


def load_rows(cfg: DataConfig, split: str = "train") -> datasets.Dataset:
    """The rows of a split (train, validation, eval) of a procedural task or of the split's local file, with
    `cfg.columns` renames applied."""
    if cfg.task is not None:
        task = TASKS[cfg.task](num_digits=cfg.num_digits, seed=cfg.task_seed)
        rows = task.splits(cfg.num_train, cfg.num_validation, cfg.num_eval)[split]
        dataset = datasets.Dataset.from_list(rows)
    else:
        dataset = load_source(cfg, split)
    missing = [src for src in cfg.columns if src not in dataset.column_names]
    if missing:
        raise DataError(f"data.columns renames {missing} but {source_name(cfg)} has columns {dataset.column_names}")
    if cfg.columns:
        dataset = dataset.rename_columns(dict(cfg.columns))
    dataset = apply_filters(dataset, cfg.filters.get(split, {}), source_name(cfg))
    unknown = [f for f in template_fields(cfg.prompt_template) if f not in dataset.column_names]
    if unknown:
        raise DataError(
            f"data.prompt_template uses {unknown} but {source_name(cfg)} has columns {dataset.column_names} "
            "(after data.columns renames)"
        )
    if cfg.prompt_template is None and cfg.prompt_column not in dataset.column_names:
        raise DataError(
            f"{source_name(cfg)} has no '{cfg.prompt_column}' column (data.prompt_column); its columns are "
            f"{dataset.column_names}: set data.prompt_column or map a column with data.columns"
        )
    if split == "train" and cfg.source_column is not None and cfg.source_column not in dataset.column_names:
        raise DataError(
            f"{source_name(cfg)} has no '{cfg.source_column}' column (data.source_column); its columns are "
            f"{dataset.column_names}: name the column that holds each row's source, or set data.source_column=null"
        )
    if cfg.max_rows is not None:
        dataset = dataset.select(range(min(cfg.max_rows, len(dataset))))
    if len(dataset) == 0:
        raise DataError(f"{source_name(cfg)} has no rows")
    return dataset


def source_name(cfg: DataConfig) -> str:
    if cfg.task is not None:
        return f"task '{cfg.task}'"
    return f"data file {cfg.path}" if cfg.path is not None else f"dataset {cfg.hub_name}"


def load_source(cfg: DataConfig, split: str) -> datasets.Dataset:
    """A split's rows: its own local file, else a split (`datasets` syntax) of the training file or Hub dataset."""
    own_file = {"train": cfg.path, "eval": cfg.eval_path, "validation": cfg.validation_path}[split]
    spec = {"train": cfg.train_split, "eval": cfg.eval_split, "validation": cfg.validation_split}[split]
    if own_file is None and spec is None:
        raise ConfigError(
            f"the {split} split needs data.{split}_path (a local .jsonl/.json/.parquet file) or data.{split}_split "
            "(a split of the training source, e.g. test, or train[400:] of a file)"
        )
    if own_file is None and cfg.hub_name is not None:
        return load_hub_split(cfg.hub_name, cfg.hub_subset, str(spec))
    return _load_file(Path(os.path.expanduser(str(own_file or cfg.path))), spec or "train")


def apply_filters(dataset: datasets.Dataset, ranges: dict[str, list[float]], name: str) -> datasets.Dataset:
    """The rows whose value of each named column lies in its inclusive [min, max] range."""
    for column, (low, high) in ranges.items():
        if column not in dataset.column_names:
            raise DataError(f"data.filters names column '{column}' but {name} has columns {dataset.column_names}")
        keep = [i for i, v in enumerate(dataset[column]) if v is not None and low <= v <= high]
        dataset = dataset.select(keep)
    return dataset


def template_fields(template: str | None) -> list[str]:
    return [] if template is None else [f for _, f, _, _ in string.Formatter().parse(template) if f]


def template_texts(template: str, columns: dict[str, list[Any]]) -> list[str]:
    """`template` formatted with each row's columns; a list value becomes its items, one per line.

    >>> template_texts("{text} Tests: {tests}", {"text": ["Add one."], "tests": [["assert f(1) == 2", "f(0) == 1"]]})
    ['Add one. Tests: assert f(1) == 2\\nf(0) == 1']
    """
    fields = template_fields(template)
    rows = len(next(iter(columns.values()))) if columns else 0
    texts = []
    for row in range(rows):
        values = {f: columns[f][row] for f in fields}
        flat = {f: "\n".join(map(str, v)) if isinstance(v, list) else v for f, v in values.items()}
        texts.append(template.format(**flat))
    return texts


def _load_file(path: Path, split: str = "train") -> datasets.Dataset:
    kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix)
    if kind is None:
        raise ConfigError(f"data.path={path}: unsupported file type '{path.suffix}'; use .jsonl, .json or .parquet")
    try:
        return datasets.load_dataset(kind, data_files=str(path), split=split)
    except Exception as err:  # datasets wraps parse errors in several types; report the file
        raise DataError(f"data file {path} could not be read as {kind}: {err}") from err


def render_prompt(text: str, template: str, tokenizer: PreTrainedTokenizerBase, system_prompt: str | None) -> str:
    if template == "plain":
        return text
    if template == "r1_zero":
        return R1_ZERO_TEMPLATE.format(prompt=text)
    if tokenizer.chat_template is None:
        raise ConfigError(
            "data.template=chat but the tokenizer has no chat template: use data.template=plain or r1_zero"
        )
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": text}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@dataclass
class PromptSet:
    """All prompts of a split, rendered and tokenized once, with every column kept for the rewards."""

    texts: list[str]  # [D] rendered prompts
    token_ids: list[list[int]]  # [D] unpadded prompt tokens
    columns: dict[str, list[Any]]  # column -> [D]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, count: int) -> PromptSet:
        """The first `count` prompts."""
        return PromptSet(self.texts[:count], self.token_ids[:count], {k: v[:count] for k, v in self.columns.items()})

    def batch(self, indices: list[int], pad_id: int) -> PromptBatch:
        """Left-pad the chosen prompts into one PromptBatch."""
        length = max(len(self.token_ids[i]) for i in indices)
        input_ids = torch.full((len(indices), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(indices), length), dtype=torch.long)
        for row, i in enumerate(indices):
            ids = self.token_ids[i]
            input_ids[row, length - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, length - len(ids) :] = 1
        return PromptBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            texts=[self.texts[i] for i in indices],
            columns={k: [v[i] for i in indices] for k, v in self.columns.items()},
        )


def build_prompt_set(
    cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, max_prompt_length: int, split: str = "train"
) -> PromptSet:
    """Load, render and tokenize a split; a prompt that is empty is an error naming its row, and so is one that is
    too long unless data.drop_long_prompts (then it is left out, and the count reported)."""
    dataset = load_rows(cfg, split)
    columns = {name: list(dataset[name]) for name in dataset.column_names}
    texts, token_ids, kept = [], [], []
    template = cfg.prompt_template
    raw_texts = columns[cfg.prompt_column] if template is None else template_texts(template, columns)
    for row, raw in enumerate(raw_texts):
        if not isinstance(raw, str) or not raw.strip():
            raise DataError(
                f"{source_name(cfg)}, row {row}: column '{cfg.prompt_column}' is empty or not text ({raw!r})"
            )
        text = render_prompt(raw, cfg.template, tokenizer, cfg.system_prompt)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_prompt_length and cfg.drop_long_prompts:
            continue
        if len(ids) > max_prompt_length:
            raise DataError(
                f"{source_name(cfg)}, row {row}: the rendered prompt is {len(ids)} tokens, over "
                f"rollout.max_prompt_length={max_prompt_length}; raise it, set data.drop_long_prompts=true, or set "
                "data.max_rows / filter the file"
            )
        texts.append(text)
        token_ids.append(ids)
        kept.append(row)
    if len(kept) < len(raw_texts):
        print(
            f"deepseek-rl: dropped {len(raw_texts) - len(kept)} of {len(raw_texts)} {split} prompts longer than "
            f"rollout.max_prompt_length={max_prompt_length} (data.drop_long_prompts)",
            file=sys.stderr,
        )
        columns = {name: [values[i] for i in kept] for name, values in columns.items()}
    if not kept:
        raise DataError(f"{source_name(cfg)}: every {split} prompt is longer than rollout.max_prompt_length")
    return PromptSet(texts=texts, token_ids=token_ids, columns=columns)


def step_indices(num_prompts: int, prompts_per_step: int, step: int, seed: int) -> list[int]:
    """The dataset rows of step `step` across all ranks: epochs of seeded permutations, read in order."""
    indices, perm_epoch, perm = [], -1, None
    for position in range(step * prompts_per_step, (step + 1) * prompts_per_step):
        epoch = position // num_prompts
        if epoch != perm_epoch:
            perm = torch.randperm(num_prompts, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
            perm_epoch = epoch
        indices.append(int(perm[position % num_prompts]))
    return indices


def rank_indices(indices: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's contiguous share of a step's prompts."""
    per_rank = len(indices) // world_size
    return indices[rank * per_rank : (rank + 1) * per_rank]
