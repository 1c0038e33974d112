"""`deepseek-rl score` through the real command: per-row scores, the summary line last, columns as keyword
arguments, failures counted, and clear errors for bad input."""

import json
from pathlib import Path

from .conftest import run_cli

ROWS = [
    {"completion": "<think>1+1</think><answer>2</answer>", "answer": "2", "level": 1},
    {"completion": "<answer>\\frac{1}{2}</answer>", "answer": "0.5", "level": 2},
    {"completion": "It is 7.", "answer": "8", "level": 3},
    {"completion": "<answer>4</answer>", "answer": "\\frac{", "level": 4},
]


def level_bonus(completions, level=None, answer=None, **kwargs):
    """A user reward that reads two other fields of the row: they arrive as keyword arguments."""
    return [float(level[0]) + (0.5 if answer[0] == "2" else 0.0)]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_scores_rows_and_prints_the_summary_last(tmp_path):
    rows = _write(tmp_path / "rows.jsonl", ROWS)
    result = run_cli("score", "--reward", "accuracy,format", "--input", str(rows), "--workers", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    *per_row, summary = _lines(result.stdout)
    assert [r["scores"]["accuracy"] for r in per_row] == [1.0, 1.0, 0.0, None]
    assert [r["scores"]["format"] for r in per_row] == [1.0, 0.0, 0.0, 0.0]
    assert summary["n"] == 4 and summary["seconds"] > 0
    assert summary["rewards"]["accuracy"] == {"mean": 2 / 3, "none": 1, "timeouts": 0, "errors": 0}
    assert summary["rewards"]["format"]["mean"] == 0.25


def test_other_fields_reach_the_reward_and_output_goes_to_a_file(tmp_path):
    rows = _write(tmp_path / "rows.jsonl", [{"text": r["completion"], **r} for r in ROWS])
    out = tmp_path / "scored.jsonl"
    result = run_cli(
        "score",
        "--reward",
        "tests.test_score_cli:level_bonus",
        "--input",
        str(rows),
        "--completion-key",
        "text",
        "--output",
        str(out),
        "--workers",
        "0",
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    [summary] = _lines(result.stdout)
    scores = [r["scores"]["tests.test_score_cli:level_bonus"] for r in _lines(out.read_text())]
    assert scores == [1.5, 2.0, 3.0, 4.0]
    assert summary["rewards"]["tests.test_score_cli:level_bonus"]["mean"] == 2.625


def test_timeouts_are_counted_not_fatal(tmp_path):
    rows = _write(tmp_path / "rows.jsonl", [{"completion": r"<answer>10^{10^{10}}</answer>", "answer": "7"}, ROWS[0]])
    result = run_cli(
        "score", "--reward", "accuracy", "--input", str(rows), "--timeout", "2", "--on-failure", "none", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    *per_row, summary = _lines(result.stdout)
    assert per_row[0]["status"]["accuracy"] == "timeout" and per_row[0]["scores"]["accuracy"] is None
    assert "messages" in per_row[0] and per_row[1]["scores"]["accuracy"] == 1.0
    assert summary["rewards"]["accuracy"] == {"mean": 1.0, "none": 0, "timeouts": 1, "errors": 0}


def test_bad_input_fails_with_a_message(tmp_path):
    rows = _write(tmp_path / "rows.jsonl", ROWS)
    unknown = run_cli("score", "--reward", "acuracy", "--input", str(rows), cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown reward 'acuracy'. Did you mean 'accuracy'" in unknown.stderr
    (tmp_path / "bad.jsonl").write_text('{"completion": "a"}\n{"text": "b"}\n')
    missing = run_cli("score", "--reward", "format", "--input", str(tmp_path / "bad.jsonl"), cwd=tmp_path)
    assert missing.returncode == 2 and "bad.jsonl:2: no string field 'completion'" in missing.stderr
