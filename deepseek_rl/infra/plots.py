"""PNG plots of training curves: one row of panels per task or run, one line per seed, read from metrics.jsonl.

Panels, left to right:
  reward                mean reward of the training batch per GRPO step: a centred moving average (9 steps) drawn
                        solid over the raw values drawn faint
  held-out accuracy     greedy accuracy on the held-out problems against training seconds (`train/seconds`: the
                        steps, evaluations excluded): RL solid, the SFT controls (stages/control.py) dashed and
                        dotted, all from the same cold start, so RL and more imitation share one axis
  KL                    per-token KL to the reference (the starting policy) per step, when the run has a reference
                        (algorithm.kl_coef > 0 or algorithm.log_kl)
  entropy               mean per-token entropy of the sampled completions per step
  completion length     mean completion tokens per step, on an axis from 0
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

SMOOTHING = 9  # steps in the reward's moving average
STYLES = ("--", ":", "-.")


@dataclass
class Curves:
    """One run's metrics files: the GRPO stage's and its controls' (label -> metrics.jsonl)."""

    label: str  # the legend entry, e.g. "seed 0" ("" for a single run)
    grpo: Path
    controls: dict[str, Path] = field(default_factory=dict)


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def series(lines: list[dict], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    points = [(m[x], m[key]) for m in lines if m.get(key) is not None and m.get(x) is not None]
    return [s for s, _ in points], [v for _, v in points]


def moving_average(values: list[float], window: int = SMOOTHING) -> list[float]:
    """Centred moving average; near the ends the window shrinks to what is there.

    >>> moving_average([0.0, 3.0, 6.0, 9.0], window=3)
    [1.5, 3.0, 6.0, 7.5]
    """
    half = window // 2
    return [
        sum(values[max(0, i - half) : i + half + 1]) / len(values[max(0, i - half) : i + half + 1])
        for i in range(len(values))
    ]


def held_out_points(lines: list[dict]) -> tuple[list[float], list[float]]:
    """(training seconds, greedy accuracy) of each held-out evaluation; an evaluation logged on a line without
    `train/seconds` takes that of the step line it belongs to (the same step)."""
    seconds = {m["step"]: m["train/seconds"] for m in lines if "train/seconds" in m}
    seconds.setdefault(0, 0.0)
    points = [
        (m.get("train/seconds", seconds.get(m["step"])), m["eval/greedy_accuracy"])
        for m in lines
        if "eval/greedy_accuracy" in m
    ]
    points = [(s, a) for s, a in points if s is not None]
    return [s for s, _ in points], [a for _, a in points]


def draw_row(axes, runs: list[Curves], colors: list) -> None:
    reward, held_out, kl, entropy, length = axes
    for run, color in zip(runs, colors, strict=True):
        grpo = read_metrics(run.grpo)
        steps, values = series(grpo, "reward")
        if steps:
            reward.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
            reward.plot(steps, moving_average(values), color=color, label=run.label or None)
        xs, ys = held_out_points(grpo)
        held_out.plot(xs, ys, color=color, marker="o", markersize=3)
        for style, path in zip(STYLES, run.controls.values(), strict=False):
            xs, ys = held_out_points(read_metrics(path))
            held_out.plot(xs, ys, color=color, linestyle=style, marker=".", markersize=3)
        for ax, key in ((kl, "kl"), (entropy, "entropy"), (length, "completion_length/mean")):
            steps, values = series(grpo, key)
            if steps and any(values):
                ax.plot(steps, values, color=color)
    length.set_ylim(bottom=0)
    for ax, title, xlabel in (
        (reward, f"reward (mean of {SMOOTHING} steps; raw faint)", "GRPO step"),
        (held_out, "held-out greedy accuracy", "training seconds (evaluations excluded)"),
        (kl, "KL to the starting policy (per token)", "GRPO step"),
        (entropy, "entropy (per token)", "GRPO step"),
        (length, "completion length (tokens)", "GRPO step"),
    ):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(alpha=0.3)
    if not kl.lines:
        kl.text(0.5, 0.5, "no reference model\n(algorithm.log_kl=true adds one)", ha="center", va="center",
                transform=kl.transAxes, fontsize=8)  # fmt: skip
    held_out.set_ylim(-0.02, 1.02)
    # the legend: one entry per line style (RL, each control) in grey, and one per run's colour
    controls = list(dict.fromkeys(name for run in runs for name in run.controls))
    styles = [("-", "RL")] + list(zip(STYLES, controls, strict=False))
    entries = [Line2D([], [], color="grey", linestyle=style, label=name) for style, name in styles]
    entries += [
        Line2D([], [], color=color, label=run.label) for run, color in zip(runs, colors, strict=True) if run.label
    ]
    held_out.legend(handles=entries, fontsize=7)


def plot_grid(rows: dict[str, list[Curves]], png: Path) -> None:
    """One row of the five panels per entry of `rows` (title -> runs), one colour per run."""
    figure, axes = plt.subplots(len(rows), 5, figsize=(24, 3.8 * len(rows)), squeeze=False)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row_axes, (title, runs) in zip(axes, rows.items(), strict=True):
        draw_row(row_axes, runs, [palette[i % len(palette)] for i in range(len(runs))])
        if title:
            row_axes[0].set_ylabel(title, fontsize=10, fontweight="bold")
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=100)
    plt.close(figure)


def plot_training_curves(metrics: Path, png: Path, controls: dict[str, Path] | None = None) -> None:
    """The curves of one run: its GRPO metrics.jsonl and, when it has them, its controls'."""
    plot_grid({"": [Curves("", metrics, dict(controls or {}))]}, png)
