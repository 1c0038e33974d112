"""PNG plots of training curves: reward, held-out accuracy and completion length over GRPO steps."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = (
    ("reward", "mean reward (train batch)"),
    ("eval/greedy_accuracy", "held-out greedy accuracy"),
    ("completion_length/mean", "completion length (tokens)"),
)


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def series(lines: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(m["step"], m[key]) for m in lines if m.get(key) is not None]
    return [s for s, _ in points], [v for _, v in points]


def plot_training_curves(metrics: Path | dict[str, Path], png: Path) -> None:
    """One panel per curve; `metrics` is one metrics.jsonl, or {label: metrics.jsonl} to overlay several runs."""
    runs = {"": metrics} if isinstance(metrics, Path) else metrics
    figure, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.6))
    for label, path in runs.items():
        lines = read_metrics(path)
        for ax, (key, _) in zip(axes, PANELS, strict=True):
            steps, values = series(lines, key)
            marker = "o" if key.startswith("eval/") else None
            if steps:
                ax.plot(steps, values, marker=marker, markersize=3, label=label or None)
    for ax, (_, title) in zip(axes, PANELS, strict=True):
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend()
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=110)
    plt.close(figure)
