"""Reward benchmark on the real data in ../shared: agreement, false-positive rates and throughput.

    python -m deepseek_rl.tools.bench_rewards [--workers N] [--only math,gsm8k,mbpp] [--show 10] [--limit N]

- math: MATH subset (500): each solution (its last `\\boxed{}`) and `<answer>{gold}</answer>` against the gold
  answer; a shuffled pairing (no row keeps its own) for the false-positive rate; the rows that disagree and why.
- gsm8k: train + test (8,792): the worked solution ending in "#### N" (the final number, thousands separators
  included); the worked solution without that line (its last number, which is not always the answer); shuffled.
- mbpp: all 974 reference solutions through `code` (must all pass), then a shuffled pairing (another task's code).

Prints one line per measurement and a JSON summary last. Throughput is samples per second of wall time through the
same RewardRunner that training uses, with the worker count shown. `--limit N` keeps the first N rows of each data
set (a quick check of the same code path; the rates then describe those rows only).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

from deepseek_rl.paths import shared_dir
from deepseek_rl.rewards.runner import RewardRunner, default_workers


def read_jsonl(relative: str) -> list[dict[str, Any]]:
    path = shared_dir() / "data" / relative
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def first(rows: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    return rows if limit is None else rows[:limit]


def shuffled(n: int, seed: int = 0) -> list[int]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [(j + 1) % n if j == i else j for i, j in enumerate(order)]


def measure(runner: RewardRunner, completions: list[str], columns: dict[str, list]) -> tuple[list, list, float]:
    start = time.perf_counter()
    scores = runner.score(completions, columns)
    return scores.values[0], scores.messages[0], time.perf_counter() - start


def report(name: str, values: list, seconds: float, expect_match: bool) -> dict[str, Any]:
    hits = sum(v == 1.0 for v in values)
    line = {"case": name, "n": len(values), "match": hits, "rate": hits / len(values), "seconds": round(seconds, 2)}
    line["per_second"] = round(len(values) / seconds, 1)
    line["none"] = sum(v is None for v in values)
    print(json.dumps(line), flush=True)
    return line


def bench_math(workers: int, show: int, limit: int | None = None) -> list[dict]:
    rows = first(read_jsonl("math/test_subset500.jsonl"), limit)
    golds = {"answer": [r["answer"] for r in rows]}
    runner = RewardRunner(["accuracy"], num_workers=workers)
    try:
        runner.score(["<answer>1</answer>"], {"answer": ["1"]})  # start the workers outside the timing
        values, messages, seconds = measure(runner, [r["solution"] for r in rows], golds)
        out = [report("math/solution", values, seconds, True)]
        for row, value, message in [x for x in zip(rows, values, messages, strict=True) if x[1] != 1.0][:show]:
            print(f"  disagree {row['unique_id']}: gold {row['answer']!r} -> {value} {message}")
        tagged = [f"<answer>{r['answer']}</answer>" for r in rows]
        out.append(report("math/answer_tag", *_drop(measure(runner, tagged, golds)), True))
        order = shuffled(len(rows))
        values, _, seconds = measure(runner, [rows[j]["solution"] for j in order], golds)
        out.append(report("math/shuffled", values, seconds, False))
        for i in [i for i, v in enumerate(values) if v == 1.0][:show]:
            print(f"  shuffled match: {rows[order[i]]['answer']!r} ~ {rows[i]['answer']!r}")
    finally:
        runner.close()
    return out


def _drop(measured: tuple[list, list, float]) -> tuple[list, float]:
    return measured[0], measured[2]


def bench_gsm8k(workers: int, show: int, limit: int | None = None) -> list[dict]:
    rows = first(read_jsonl("gsm8k/train.jsonl") + read_jsonl("gsm8k/test.jsonl"), limit)
    golds = {"answer": [r["answer"] for r in rows]}
    runner = RewardRunner(["accuracy"], num_workers=workers)
    try:
        runner.score(["<answer>1</answer>"], {"answer": ["1"]})
        out = [report("gsm8k/final_number", *_drop(measure(runner, golds["answer"], golds)), True)]
        worked = [r["answer"].rsplit("####", 1)[0] for r in rows]
        values, _, seconds = measure(runner, worked, golds)
        out.append(report("gsm8k/worked_last_number", values, seconds, True))
        for text, row in [(w, r) for w, r, v in zip(worked, rows, values, strict=True) if v != 1.0][:show]:
            print(f"  last number differs: ...{text.strip()[-70:]!r} gold {row['answer'].rsplit('####', 1)[1].strip()}")
        order = shuffled(len(rows))
        values, _, seconds = measure(runner, [golds["answer"][j] for j in order], golds)
        out.append(report("gsm8k/shuffled", values, seconds, False))
    finally:
        runner.close()
    return out


def bench_mbpp(workers: int, show: int, limit: int | None = None) -> list[dict]:
    rows = first(read_jsonl("mbpp/mbpp.jsonl"), limit)
    columns = {"tests": [r["test_list"] for r in rows], "setup": [r["test_setup_code"] for r in rows]}
    runner = RewardRunner(["code"], num_workers=workers, timeout=20.0)
    try:
        runner.score(["```python\nx = 1\n```"], {"tests": [["assert x == 1"]]})
        completions = [f"```python\n{r['code']}\n```" for r in rows]
        values, messages, seconds = measure(runner, completions, columns)
        out = [report("mbpp/reference", values, seconds, True)]
        for row, value, message in [x for x in zip(rows, values, messages, strict=True) if x[1] != 1.0][:show]:
            print(f"  failed task {row['task_id']}: {value} {message}")
        order = shuffled(len(rows))
        wrong = [completions[j] for j in order]
        out.append(report("mbpp/shuffled", *_drop(measure(runner, wrong, columns)), False))
    finally:
        runner.close()
    return out


BENCHES = {"math": bench_math, "gsm8k": bench_gsm8k, "mbpp": bench_mbpp}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m deepseek_rl.tools.bench_rewards", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: the cores)")
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset of: math, gsm8k, mbpp")
    parser.add_argument("--show", type=int, default=10, help="disagreeing rows to print per case")
    parser.add_argument("--limit", type=int, default=None, help="first N rows of each data set (default: all)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",")]
    unknown = [name for name in names if name not in BENCHES]
    if unknown:
        parser.error(f"--only: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(BENCHES)}")
    if args.limit is not None and args.limit < 2:
        parser.error(f"--limit={args.limit}: give at least 2 rows (the shuffled pairing needs two)")
    workers = default_workers() if args.workers is None else args.workers
    results = []
    for name in names:
        results += BENCHES[name](workers, args.show, args.limit)
    summary = {"workers": workers, "results": results}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
