"""`deepseek-rl score`: score a JSONL file offline with named rewards, to debug a reward before a run.

    deepseek-rl score --reward accuracy,format --input rows.jsonl [--completion-key completion] [--output out.jsonl]

Every field of a row other than the completion reaches the rewards as a keyword argument (one value per row),
exactly as dataset columns do in training; a field missing from a row is None there. Scoring uses the same engine
as training (`RewardRunner`: worker pool, per-sample timeout, failures scored `--on-failure` and counted).

Output: one JSON line per row, {"index", "scores": {reward: score}, "status": {reward: ok|timeout|error}} plus
"messages" for failed rewards, written to --output or else to stdout; then, always last on stdout, one summary line
{"n", "seconds", "rewards": {reward: {"mean", "none", "timeouts", "errors"}}} with mean over the scored rows and
counts of rows that scored None, timed out or raised. Exit status 2 on a bad argument or input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

CHUNK = 512


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="deepseek-rl score", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reward", required=True, help="reward names (or module:function), comma-separated")
    parser.add_argument("--input", required=True, help="JSONL file, one row per completion")
    parser.add_argument("--completion-key", default="completion", help="field holding the completion text")
    parser.add_argument("--output", help="write per-row scores here instead of stdout")
    parser.add_argument("--args", default="{}", help='JSON reward arguments, e.g. \'{"code": {"timeout": 5}}\'')
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: the cores; 0: none)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per reward per row in a worker")
    parser.add_argument("--on-failure", default="0", help="score of a timed-out or failed row: a number or none")
    parser.add_argument(
        "--sandbox", default="auto", choices=("strong", "weak", "auto"), help="code isolation (reward.sandbox)"
    )
    return parser.parse_args(argv)


def read_rows(path: str, key: str) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not JSON ({err})") from err
            if not isinstance(row, dict) or not isinstance(row.get(key), str):
                raise ValueError(f"{path}:{number}: no string field '{key}' (set --completion-key)")
            rows.append(row)
    return rows


def columns_of(rows: list[dict[str, Any]], key: str) -> dict[str, list[Any]]:
    names = dict.fromkeys(k for row in rows for k in row if k != key)
    return {name: [row.get(name) for row in rows] for name in names}


def summary(names: list[str], values: dict[str, list], status: dict[str, list], seconds: float) -> dict:
    rewards = {}
    for name in names:
        scored = [v for v, s in zip(values[name], status[name], strict=True) if v is not None and s == "ok"]
        rewards[name] = {
            "mean": sum(scored) / len(scored) if scored else None,
            "none": sum(v is None and s == "ok" for v, s in zip(values[name], status[name], strict=True)),
            "timeouts": status[name].count("timeout"),
            "errors": status[name].count("error"),
        }
    n = len(next(iter(values.values()), []))
    return {"n": n, "seconds": round(seconds, 3), "rewards": rewards}


def score_file(args: argparse.Namespace, out) -> dict:
    from deepseek_rl.config import RewardConfig
    from deepseek_rl.rewards.runner import RewardRunner

    names = [n.strip() for n in args.reward.split(",") if n.strip()]
    on_failure = None if args.on_failure.lower() in ("none", "null") else float(args.on_failure)
    cfg = RewardConfig(
        weights=dict.fromkeys(names, 1.0),
        args=json.loads(args.args),
        num_workers=args.workers,
        timeout=args.timeout,
        on_failure=on_failure,
        sandbox=args.sandbox,
    )
    rows = read_rows(args.input, args.completion_key)
    start = time.perf_counter()
    context = {"sandbox": cfg.sandbox}
    runner = RewardRunner(names, cfg.args, cfg.num_workers, cfg.timeout, cfg.on_failure, context=context)
    values: dict[str, list] = {n: [] for n in names}
    status: dict[str, list] = {n: [] for n in names}
    try:
        for offset in range(0, len(rows), CHUNK):
            chunk = rows[offset : offset + CHUNK]
            scores = runner.score([r[args.completion_key] for r in chunk], columns_of(chunk, args.completion_key))
            for j, name in enumerate(names):
                values[name] += scores.values[j]
                status[name] += scores.status[j]
            for i in range(len(chunk)):
                record: dict[str, Any] = {
                    "index": offset + i,
                    "scores": {n: scores.values[j][i] for j, n in enumerate(names)},
                    "status": {n: scores.status[j][i] for j, n in enumerate(names)},
                }
                failed = {n: scores.messages[j][i] for j, n in enumerate(names) if scores.status[j][i] != "ok"}
                if failed:
                    record["messages"] = failed
                out.write(json.dumps(record) + "\n")
    finally:
        runner.close()
    return summary(names, values, status, time.perf_counter() - start)


def main(argv: list[str]) -> None:
    from deepseek_rl.config import ConfigError

    args = parse_args(argv)
    try:
        if args.output:
            with open(args.output, "w", encoding="utf-8") as out:
                result = score_file(args, out)
        else:
            result = score_file(args, sys.stdout)
    except (ConfigError, ValueError, OSError) as err:
        print(f"deepseek-rl score: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(result), flush=True)
