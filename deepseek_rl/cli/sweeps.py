"""`deepseek-rl sweeps DIR`: compare the runs of a sweep without wandb.

    deepseek-rl sweeps runs/sweeps/smoke_2026-11-29_13-01-50 [--metric reward] [--mode max|min] [--png sweep.png]

Every directory under DIR holding a `summary.json` (written when a GRPO run completes) is a run. Its overrides come
from the nearest `.hydra/overrides.yaml` at or above it (within DIR; a pipeline's GRPO stage sits one level below its
job), else from the summary. The table (markdown) has one row per run, sorted best first by the metric's best value
over the run's steps (`--mode max`: highest; `min`: lowest), then its final value; one column per key whose value
differs between runs (keys set alike in every run are listed above the table); runs that never logged the metric
come last. `--png` draws the metric over steps for each run (from its metrics.jsonl) beside a bar per run.
Jobs that failed (a `failed.json` in their folder, written by `deepseek-rl train -m`) are listed below the table
with their exit status and message.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass
class SweepRun:
    path: Path  # the directory with summary.json
    label: str  # short name: the job number (and stage folder) within the sweep directory
    overrides: dict[str, str]  # key -> value, as given on the command line
    summary: dict[str, Any]

    def value(self, kind: str, metric: str) -> float | None:
        """The summary's `kind` (final, min, max) value of `metric`, or None."""
        return self.summary.get(kind, {}).get(metric)


def parse_overrides(items: list[str]) -> dict[str, str]:
    """["algorithm.lr=1e-06", "+x=1"] -> {"algorithm.lr": "1e-06", "+x": "1"}"""
    return dict(item.split("=", 1) for item in items if "=" in item)


def read_overrides(run_dir: Path, root: Path, summary: dict[str, Any]) -> dict[str, str]:
    """The nearest .hydra/overrides.yaml at or above run_dir (stopping at root), else the summary's overrides."""
    for directory in (run_dir, *run_dir.parents):
        path = directory / ".hydra" / "overrides.yaml"
        if path.is_file():
            return parse_overrides([str(o) for o in yaml.safe_load(path.read_text()) or []])
        if directory == root:
            break
    return parse_overrides(summary.get("overrides", []))


def run_label(run_dir: Path, root: Path) -> str:
    """The path below root with a Hydra job folder `<num>_<overrides>` shortened to its number."""
    parts = list(run_dir.relative_to(root).parts) or [run_dir.name]
    found = re.match(r"(\d+)_", parts[0])
    if found:
        parts[0] = found.group(1)
    return "/".join(parts)


def find_runs(root: Path) -> list[SweepRun]:
    runs = []
    for path in sorted(root.rglob("summary.json")):
        summary = json.loads(path.read_text())
        runs.append(
            SweepRun(path.parent, run_label(path.parent, root), read_overrides(path.parent, root, summary), summary)
        )
    return runs


def find_failed(root: Path) -> list[tuple[str, dict[str, Any]]]:
    """(label, record) of every job under root that left a failed.json, in path order."""
    failed = []
    for path in sorted(root.rglob("failed.json")):
        try:
            failed.append((run_label(path.parent, root), json.loads(path.read_text())))
        except ValueError:
            failed.append((run_label(path.parent, root), {"status": "?", "message": "failed.json cannot be read"}))
    return failed


def failed_lines(failed: list[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = [f"failed jobs ({len(failed)}):"] if failed else []
    for label, record in failed:
        job = record.get("job") or ",".join(record.get("overrides", []))
        lines.append(f"- {label} ({job}): exit status {record.get('status')}, {record.get('message', '')}")
    return lines


def split_keys(runs: list[SweepRun]) -> tuple[list[str], dict[str, str]]:
    """Keys whose value differs between runs (or is missing in some), and the keys every run sets alike."""
    keys = sorted({k for run in runs for k in run.overrides})
    varying = [k for k in keys if len({run.overrides.get(k) for run in runs}) > 1]
    fixed = {k: runs[0].overrides[k] for k in keys if k not in varying}
    return varying, fixed


def rank_runs(runs: list[SweepRun], metric: str, mode: str) -> list[SweepRun]:
    """Best first by (best value, final value); runs without the metric last, in their order."""
    sign = -1.0 if mode == "max" else 1.0

    def key(run: SweepRun) -> tuple[float, float, float]:
        best, final = run.value(mode, metric), run.value("final", metric)
        if best is None:
            return (1.0, 0.0, 0.0)
        return (0.0, sign * best, sign * (final if final is not None else best))

    return sorted(runs, key=key)


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"


def sweep_table(runs: list[SweepRun], metric: str, mode: str) -> str:
    """The markdown table of the module docstring, with a line of the fixed overrides above it."""
    varying, fixed = split_keys(runs)
    header = ["rank", "run", *varying, f"{metric} ({mode})", f"{metric} (final)", "steps", "wall s"]
    lines = []
    if fixed:
        lines.append("fixed: " + " ".join(f"{k}={v}" for k, v in fixed.items()))
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, run in enumerate(rank_runs(runs, metric, mode), start=1):
        cells = [
            str(rank),
            run.label,
            *(run.overrides.get(k, "-") for k in varying),
            _fmt(run.value(mode, metric)),
            _fmt(run.value("final", metric)),
            str(run.summary.get("steps", "-")),
            _fmt(run.summary.get("wall_time_s")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(runs: list[SweepRun], metric: str, mode: str, png: Path) -> None:
    """Left: the metric over steps for each run; right: each run's best value, best at the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deepseek_rl.infra.plots import read_metrics, series

    ranked = [run for run in rank_runs(runs, metric, mode) if run.value(mode, metric) is not None]
    varying, _ = split_keys(runs)
    names = {run.label: " ".join(f"{k.split('.')[-1]}={run.overrides.get(k, '-')}" for k in varying) for run in runs}
    figure, (curves, bars) = plt.subplots(1, 2, figsize=(12, 0.9 + 0.35 * max(len(ranked), 8)))
    for run in ranked:
        metrics_file = run.path / "metrics.jsonl"
        if metrics_file.exists():
            steps, values = series(read_metrics(metrics_file), metric)
            label = f"{run.label}  {names[run.label]}".strip()
            curves.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3, label=label)
    curves.set_title(f"{metric} per step")
    curves.set_xlabel("GRPO step")
    curves.grid(alpha=0.3)
    if ranked:
        curves.legend(fontsize=8)
    labels = [f"{run.label}  {names[run.label]}".strip() for run in ranked]
    bars.barh(range(len(ranked)), [run.value(mode, metric) for run in ranked], color="tab:blue")
    bars.set_yticks(range(len(ranked)), labels, fontsize=8)
    bars.invert_yaxis()
    bars.set_title(f"{metric} ({mode} over steps), best first")
    bars.grid(alpha=0.3, axis="x")
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deepseek-rl sweeps", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="a sweep directory (or any folder of runs)")
    parser.add_argument("--metric", default="reward", help="metric from metrics.jsonl (default: reward)")
    parser.add_argument("--mode", choices=("max", "min"), default="max", help="which end is best (default: max)")
    parser.add_argument("--png", type=Path, default=None, help="also plot the metric per run to this PNG")
    args = parser.parse_args(argv)
    root = args.directory.resolve()
    if not root.is_dir():
        print(f"deepseek-rl sweeps: {args.directory} is not a directory", file=sys.stderr)
        sys.exit(2)
    runs, failed = find_runs(root), find_failed(root)
    if not runs:
        print(f"deepseek-rl sweeps: no summary.json under {args.directory} (runs write it when they complete)")
        if failed:
            print("\n".join(failed_lines(failed)))
        sys.exit(1)
    known = {k for run in runs for k in run.summary.get("final", {})}
    if args.metric not in known:
        print(f"deepseek-rl sweeps: no run logged '{args.metric}'; some metrics: {sorted(known)[:20]}", file=sys.stderr)
        sys.exit(2)
    print(f"{len(runs)} runs under {args.directory}, sorted by {args.metric} ({args.mode} over steps):")
    print(sweep_table(runs, args.metric, args.mode))
    if failed:
        print("\n".join(failed_lines(failed)))
    if args.png is not None:
        plot_sweep(runs, args.metric, args.mode, args.png)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
