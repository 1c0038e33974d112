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
    missing = [src for src in cfg.columns if src not in dataset.column_names]
    if missing:
        raise DataError(f"data.columns renames {missing} but {source_name(cfg)} has columns {dataset.column_names}")
    if cfg.columns:
        dataset = dataset.rename_columns(dict(cfg.columns))
    if cfg.transform is not None:
        dataset = apply_transform(dataset, cfg.transform, source_name(cfg))
    dataset = apply_filters(dataset, cfg.filters.get(split, {}), source_name(cfg))
    unknown = [f for f in template_fields(cfg.prompt_template) if f not in dataset.column_names]
    if prompts and unknown:
        raise DataError(
            f"data.prompt_template uses {unknown} but {source_name(cfg)} has columns {dataset.column_names} "
            "(after data.columns renames)"
        )
    if prompts and cfg.prompt_template is None and cfg.prompt_column not in dataset.column_names:
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
