"""Where a split's rows come from: a procedural task, a local JSONL/JSON/parquet file, or a Hub dataset.

A split's rows come from its own local file (data.path, eval_path, validation_path), else from a split of the
training source (data.eval_split, e.g. `train[400:]` of a file, or `test` of a Hub dataset), read with `datasets`;
then `columns` renames, the row `transform`, the split's `filters` (column ranges) and `max_rows` apply, in that
order. The prompt text is the `prompt_column`, or `prompt_template` formatted with the row's columns.
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any

import datasets

from deepseek_rl.config.data import DataConfig
from deepseek_rl.data.files import LINE_COLUMN, read_data_file
from deepseek_rl.data.tasks import TASKS
from deepseek_rl.data.transforms import apply_transform
from deepseek_rl.errors import ConfigError, DataError
from deepseek_rl.hub import load_hub_split


def load_rows(cfg: DataConfig, split: str = "train", prompts: bool = True) -> datasets.Dataset:
    """The rows of a split (train, validation, eval) of a procedural task or of the split's local file, with
    `cfg.columns` renames applied; with `prompts` (the default) the prompt column or template fields must exist."""
    if cfg.task is not None:
        task = TASKS[cfg.task](num_digits=cfg.num_digits, seed=cfg.task_seed, **cfg.task_args)
        rows = task.splits(cfg.num_train, cfg.num_validation, cfg.num_eval)[split]
        dataset = datasets.Dataset.from_list(rows)
    else:
        dataset = load_source(cfg, split)
    name = source_name(cfg, split)
    missing = [src for src in cfg.columns if src not in dataset.column_names]
    if missing:
        raise DataError(f"data.columns renames {missing} but {name} has columns {visible(dataset)}")
    if cfg.columns:
        dataset = dataset.rename_columns(dict(cfg.columns))
    if cfg.transform is not None:
        dataset = apply_transform(dataset, cfg.transform, name)
    dataset = apply_filters(dataset, cfg.filters.get(split, {}), name)
    unknown = [f for f in template_fields(cfg.prompt_template) if f not in dataset.column_names]
    if prompts and unknown:
        raise DataError(
            f"data.prompt_template uses {unknown} but {name} has columns {visible(dataset)} "
            "(after data.columns renames)"
        )
    if prompts and cfg.prompt_template is None and cfg.prompt_column not in dataset.column_names:
        raise DataError(
            f"{name} has no '{cfg.prompt_column}' column (data.prompt_column); its columns are "
            f"{visible(dataset)}: set data.prompt_column or map a column with data.columns"
        )
    if split == "train" and cfg.source_column is not None and cfg.source_column not in dataset.column_names:
        raise DataError(
            f"{name} has no '{cfg.source_column}' column (data.source_column); its columns are "
            f"{visible(dataset)}: name the column that holds each row's source, or set data.source_column=null"
        )
    if cfg.max_rows is not None:
        dataset = dataset.select(range(min(cfg.max_rows, len(dataset))))
    if len(dataset) == 0:
        raise DataError(f"{name} has no rows")
    return dataset


def visible(dataset: datasets.Dataset) -> list[str]:
    """The dataset's columns as the user wrote them (without the line numbers added on load)."""
    return [c for c in dataset.column_names if c != LINE_COLUMN]


def source_name(cfg: DataConfig, split: str = "train") -> str:
    """What a split's rows come from, for messages: its own file (data.eval_path...), else the training source."""
    if cfg.task is not None:
        return f"task '{cfg.task}' ({split} split)"
    own = split_file(cfg, split)
    if own is not None:
        return f"data file {own}"
    return f"data file {cfg.path}" if cfg.path is not None else f"dataset {cfg.hub_name}"


def split_file(cfg: DataConfig, split: str) -> str | None:
    return {"train": cfg.path, "eval": cfg.eval_path, "validation": cfg.validation_path}[split]


def load_source(cfg: DataConfig, split: str) -> datasets.Dataset:
    """A split's rows: its own local file, else a split (`datasets` syntax) of the training file or Hub dataset."""
    own_file = split_file(cfg, split)
    spec = {"train": cfg.train_split, "eval": cfg.eval_split, "validation": cfg.validation_split}[split]
    if own_file is None and spec is None:
        raise ConfigError(
            f"the {split} split needs data.{split}_path (a local .jsonl/.json/.parquet file) or data.{split}_split "
            "(a split of the training source, e.g. test, or train[400:] of a file)"
        )
    if own_file is None and cfg.hub_name is not None:
        return load_hub_split(cfg.hub_name, cfg.hub_subset, str(spec))
    key = f"data.{split}_path" if own_file is not None and split != "train" else "data.path"
    return read_data_file(Path(os.path.expanduser(str(own_file or cfg.path))), spec or "train", key)


def apply_filters(dataset: datasets.Dataset, ranges: dict[str, list[float]], name: str) -> datasets.Dataset:
    """The rows whose value of each named column lies in its inclusive [min, max] range."""
    for column, (low, high) in ranges.items():
        if column not in dataset.column_names:
            raise DataError(f"data.filters names column '{column}' but {name} has columns {visible(dataset)}")
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
