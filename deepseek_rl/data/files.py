"""Local data files (.jsonl, .json, .parquet) read with `datasets`, with errors that name the file and the line.

`datasets` reads JSON with pyarrow, which accepts bytes that are not UTF-8 (they fail later, on first access, deep
in a traceback), says "could not be read" with a blank reason for an empty file, and counts rows from 0 within a
block. So a JSON file is checked first, in one pass over its lines: every line must be UTF-8 and the file must
hold at least one row. When `datasets` then fails, the file is read again line by line to find the first line
that is not a JSON object, or whose column changes type, and the error names that 1-based line.

The rows of a JSON-lines file carry their line number in the column `LINE_COLUMN` (dropped before the rows reach
prompts or rewards), so that errors found later (an empty or too long prompt, a bad chat) name the line too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets

from deepseek_rl.errors import ConfigError, DataError

LINE_COLUMN = "__line__"
KINDS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def read_data_file(path: Path, split: str, key: str) -> datasets.Dataset:
    """The rows of a local file (`split` in `datasets` slice syntax, e.g. train[:400]); `key` is the config key
    that named the file (data.path, data.eval_path, data.validation_path), for the messages."""
    kind = KINDS.get(path.suffix)
    if kind is None:
        raise ConfigError(f"{key}={path}: unsupported file type '{path.suffix}'; use .jsonl, .json or .parquet")
    lines = scan_json_lines(path) if kind == "json" else None
    try:
        dataset = datasets.load_dataset(kind, data_files=str(path), split=split)
    except Exception as err:  # datasets wraps parse errors in several types: find the line ourselves
        if kind == "json":
            locate_json_error(path)
        reason = str(err).strip() or type(err).__name__
        raise DataError(f"data file {path} ({key}) could not be read as {kind}: {reason}") from err
    lines = sliced(lines, split) if lines is not None and path.suffix == ".jsonl" else None
    if lines is not None and len(lines) == len(dataset):
        dataset = dataset.add_column(LINE_COLUMN, lines)
    return dataset


def sliced(lines: list[int], split: str) -> list[int] | None:
    """The line numbers of the rows a split spec selects (e.g. train[400:]), or None when it cannot tell."""
    try:
        parts = datasets.ReadInstruction.from_spec(split).to_absolute({"train": len(lines)})
    except Exception:  # noqa: BLE001 - an unusual spec only costs the line numbers
        return None
    return [n for part in parts for n in lines[part.from_ : part.to]]


def scan_json_lines(path: Path) -> list[int]:
    """The 1-based numbers of the non-blank lines; DataError for a line that is not UTF-8 or a file without rows."""
    numbers: list[int] = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"data file {path}, line {number}: byte 0x{raw[err.start]:02x} at column {err.start + 1} is not "
                    "UTF-8; save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8) or remove the line"
                ) from None
            if text.strip():
                numbers.append(number)
    if not numbers:
        raise DataError(f"data file {path} is empty: it has no rows; give a file with one JSON object per line")
    return numbers


def json_kind(value: Any) -> str | None:
    """The JSON type of a value for schema checks (None for null, which fits any column)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {str: "a string", list: "a list", dict: "an object"}[type(value)]


def locate_json_error(path: Path) -> None:
    """Raise DataError naming the first line that breaks the file; return when none is found."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            where = f"data file {path}, line {err.lineno}"
            raise DataError(f"{where}: not valid JSON ({err.msg}, column {err.colno})") from None
        if isinstance(rows, list):
            check_rows(path, [(None, row) for row in rows])
        return
    parsed = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            parsed.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise DataError(
                f"data file {path}, line {number}: not valid JSON ({err.msg}, column {err.colno}); "
                "fix or remove the line (one JSON object per line)"
            ) from None
    check_rows(path, parsed)


def check_rows(path: Path, rows: list[tuple[int | None, Any]]) -> None:
    """Every row an object, and every column one JSON type across rows (null fits any)."""
    seen: dict[str, tuple[str, int | None]] = {}
    for index, (number, row) in enumerate(rows):
        where = f"line {number}" if number is not None else f"row {index + 1}"
        if not isinstance(row, dict):
            raise DataError(f"data file {path}, {where}: expected a JSON object ({{\"column\": value, ...}}), got "
                            f"{json_kind(row) or 'null'}")  # fmt: skip
        for column, value in row.items():
            kind = json_kind(value)
            if kind is None:
                continue
            first = seen.setdefault(column, (kind, number if number is not None else index + 1))
            if first[0] != kind:
                other = f"line {first[1]}" if number is not None else f"row {first[1]}"
                raise DataError(
                    f"data file {path}, {where}: column '{column}' is {kind} here but {first[0]} on {other}; "
                    "give the column one type in every row"
                )


def row_labels(source: str, columns: dict[str, list[Any]]) -> list[str]:
    """'<source>, line N' per row when the rows carry their line (popped from `columns`), else '<source>, row N'
    (1-based)."""
    lines = columns.pop(LINE_COLUMN, None)
    count = len(next(iter(columns.values()))) if columns else 0
    if lines is not None:
        return [f"{source}, line {n}" for n in lines]
    return [f"{source}, row {i + 1}" for i in range(count)]
