"""Reward-hacking alarms: small pure functions over the history of logged metrics.

A detector takes the history (one mapping of metrics per logged GRPO step, oldest first; steps that lack a metric are
skipped) and returns a message when its pattern shows in the last `window` steps, else None. "Rises" and "falls"
compare the mean of the window's later half with the mean of its earlier half, so one noisy step does not trigger.

  format_without_accuracy   the format reward is near 1 while accuracy falls
  length_without_accuracy   completions grow longer without getting more accurate
  repetition_rising         repeated n-grams in completions rise to a high share
  completion_dominance      one completion text takes over its group, step after step

`AlarmMonitor` runs them after every step and reports each alarm once, at the first step it triggers; a resumed run
reads the `alarm/<name>` entries of its history, so an alarm does not fire twice. Thresholds are defaults of the
keyword arguments below: tuned to flag a trend that a person should look at, not to prove hacking.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from statistics import fmean
from typing import Any

History = Sequence[Mapping[str, Any]]
Detector = Callable[[History], "str | None"]

LENGTH_KEY = "completion_length/mean"
REPETITION_KEY = "completions/repetition"
DOMINANCE_KEY = "completions/dominant_groups"


def last_values(history: History, key: str, window: int) -> list[float] | None:
    """The last `window` finite values of `key`; None while there are fewer."""
    values = [float(m[key]) for m in history if isinstance(m.get(key), int | float) and math.isfinite(m[key])]
    return values[-window:] if len(values) >= window else None


def halves(values: list[float]) -> tuple[float, float]:
    """Means of the earlier and the later half (the middle value of an odd count is in neither)."""
    half = len(values) // 2
    return fmean(values[:half]), fmean(values[-half:])


def format_without_accuracy(
    history: History, format_key: str, accuracy_key: str, window: int = 10, near_one: float = 0.9, drop: float = 0.1
) -> str | None:
    """The policy keeps the easy part of the reward (the format) and loses the task.

    Fires when, over the last `window` steps, the format reward's later-half mean is >= `near_one` and accuracy's
    later-half mean is at least `drop` (absolute) below its earlier-half mean.
    """
    fmt, acc = last_values(history, format_key, window), last_values(history, accuracy_key, window)
    if fmt is None or acc is None:
        return None
    fmt_late = halves(fmt)[1]
    acc_early, acc_late = halves(acc)
    if fmt_late >= near_one and acc_early - acc_late >= drop:
        return (
            f"{format_key} is {fmt_late:.2f} while {accuracy_key} fell {acc_early:.3f} -> {acc_late:.3f} over the "
            f"last {window} steps: the policy may be satisfying the format without solving the task"
        )
    return None


def length_without_accuracy(
    history: History,
    accuracy_key: str,
    length_key: str = LENGTH_KEY,
    window: int = 20,
    growth: float = 0.3,
    min_gain: float = 0.02,
) -> str | None:
    """Longer completions that are not more accurate (padding the reasoning, or drifting to the length cap).

    Fires when, over the last `window` steps, the mean length's later half is >= (1 + `growth`) x its earlier half
    while accuracy's later half gained less than `min_gain` (absolute) over its earlier half.
    """
    length, acc = last_values(history, length_key, window), last_values(history, accuracy_key, window)
    if length is None or acc is None:
        return None
    len_early, len_late = halves(length)
    acc_early, acc_late = halves(acc)
    if len_late >= (1 + growth) * len_early and acc_late - acc_early < min_gain:
        return (
            f"{length_key} grew {len_early:.1f} -> {len_late:.1f} over the last {window} steps while {accuracy_key} "
            f"went {acc_early:.3f} -> {acc_late:.3f}: length is growing without accuracy"
        )
    return None


def repetition_rising(
    history: History, key: str = REPETITION_KEY, window: int = 10, rise: float = 0.1, level: float = 0.2
) -> str | None:
    """Completions repeating themselves more and more (degenerate loops).

    Fires when, over the last `window` steps, the later-half mean share of repeated n-grams is >= `level` and at
    least `rise` (absolute) above the earlier-half mean.
    """
    values = last_values(history, key, window)
    if values is None:
        return None
    early, late = halves(values)
    if late >= level and late - early >= rise:
        return f"{key} rose {early:.2f} -> {late:.2f} over the last {window} steps: completions are getting repetitive"
    return None


def completion_dominance(history: History, key: str = DOMINANCE_KEY, window: int = 5, level: float = 0.5) -> str | None:
    """One completion text takes over its group (mode collapse): such groups teach little or nothing.

    Fires when at least `level` of the groups were dominated (one text in over half the group) at each of the last
    `window` steps. On a task with one short canonical answer this also flags a policy that has simply converged.
    """
    values = last_values(history, key, window)
    if values is None or min(values) < level:
        return None
    return (
        f"{key} stayed >= {level:.2f} for {window} steps (last {values[-1]:.2f}): the same completion dominates "
        "most groups"
    )


def default_detectors(reward_names: list[str], correctness: str, format_reward: str | None) -> dict[str, Detector]:
    """The four alarms for a recipe's rewards: accuracy is the verifier's mean (the total reward without one); the
    format alarm needs both the verifier and the format reward among the rewards."""
    has_verifier = correctness in reward_names
    accuracy = f"reward/{correctness}/mean" if has_verifier else "reward"
    detectors: dict[str, Detector] = {}
    if has_verifier and format_reward in reward_names:
        format_key = f"reward/{format_reward}/mean"
        detectors["format_without_accuracy"] = partial(
            format_without_accuracy, format_key=format_key, accuracy_key=accuracy
        )
    detectors["length_without_accuracy"] = partial(length_without_accuracy, accuracy_key=accuracy)
    detectors["repetition_rising"] = repetition_rising
    detectors["completion_dominance"] = completion_dominance
    return detectors


@dataclass(frozen=True)
class Alarm:
    name: str
    message: str


class AlarmMonitor:
    """Runs detectors on the growing history and reports each alarm once, at the first step it triggers."""

    def __init__(self, detectors: dict[str, Detector], history: History = (), keep: int = 200):
        self.detectors, self.keep = detectors, keep
        self.fired = {name for name in detectors if any(m.get(f"alarm/{name}") for m in history)}
        self.history = [dict(m) for m in history][-keep:]

    def update(self, metrics: Mapping[str, Any]) -> list[Alarm]:
        """Add one step's metrics; the alarms that trigger for the first time."""
        self.history = [*self.history[1 - self.keep :], dict(metrics)]
        new = []
        for name, detect in self.detectors.items():
            message = None if name in self.fired else detect(self.history)
            if message is not None:
                self.fired.add(name)
                new.append(Alarm(name, message))
        return new


@dataclass
class RewardFailureGuard:
    """Stops a run whose reward keeps failing: a reward whose `reward/<name>/failed` share of a step's samples (the
    metric is global, so every rank decides alike) exceeds `max_rate` prints an alarm; `max_steps` such steps in a
    row raise RewardError with the reward's first failure, before the next step trains on failure scores."""

    names: list[str]
    max_rate: float
    max_steps: int
    streaks: dict[str, int] = field(default_factory=dict)

    def check(self, step: int, metrics: Mapping[str, Any], first_errors: Mapping[str, str], report: bool) -> None:
        from deepseek_rl.errors import RewardError

        for name in self.names:
            share = metrics.get(f"reward/{name}/failed", 0.0)
            self.streaks[name] = self.streaks.get(name, 0) + 1 if share > self.max_rate else 0
            if not self.streaks[name]:
                continue
            first = first_errors.get(name, "see `deepseek-rl score`")
            what = f"reward '{name}' failed on {share:.0%} of the samples of step {step} ({first})"
            if self.streaks[name] >= self.max_steps:
                raise RewardError(
                    f"{what}, over reward.max_error_rate={self.max_rate} for {self.streaks[name]} steps in a row: "
                    f"fix the reward (`deepseek-rl score --reward {name} --input rows.jsonl` shows each sample's "
                    "outcome), or raise reward.max_error_rate / reward.max_error_steps"
                )
            if report:
                print(f"deepseek-rl: alarm: {what}; the run stops after reward.max_error_steps="
                      f"{self.max_steps} such steps in a row", file=sys.stderr, flush=True)  # fmt: skip
