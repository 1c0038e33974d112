"""Looking at rollouts: tables of sampled groups, and the rollout metrics that show a policy gaming its reward.

Tables: every `logger.rollout_table_every` steps (and at step 1) rank 0 turns its first `logger.rollout_table_groups`
groups into rows, one per completion: step, group, sample, prompt, completion, the total reward, one column per
reward term (`reward/<name>`, null where the reward returned None), advantage, length (tokens), truncated,
correct (when a verifier is among the rewards), and the prompt's scalar dataset columns (`data/<column>`, as text).
The tracker writes them to wandb as a new table per step and to `<run>/rollouts/{jsonl,parquet}/step_<N>.*`.

Metrics, over the whole global batch (computed from these functions by metrics.py, in the step's one reduction):
  completion_length/correct, /incorrect   mean length of the completions the verifier scores 1.0 / less; the
                                          verifier is the reward named by `eval.correctness` when the recipe has it
  completions/repetition                  mean share of repeated token 4-grams in a completion (1 - distinct/total):
                                          the `repetition` reward's measure, over tokens so it needs no word breaks
  completions/dominant_groups             share of groups whose most common completion text is over half the group
  source/<value>/reward, /accuracy, /completion_length, /share   per value of `data.source_column`
The share of zero-std groups and the truncation rate are logged by metrics.py (`zero_std_groups`, `truncated`).
Alarms over these metrics are in alarms.py; the observer evaluates them on rank 0 and reports each once.
"""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from deepseek_rl.batch import ScoredBatch
from deepseek_rl.config.schema import LoggerConfig
from deepseek_rl.config.stages import EvalConfig
from deepseek_rl.infra.tracking import RunTracker
from deepseek_rl.stages.alarms import AlarmMonitor, default_detectors

NGRAM = 4


def correct_mask(scored: ScoredBatch, verifier: str) -> Tensor | None:
    """[N] bool: the verifier reward scored 1.0; None when the verifier is not among the batch's rewards."""
    if verifier not in scored.reward_names:
        return None
    return scored.reward_terms[:, scored.reward_names.index(verifier)] == 1.0


def repeated_ngram_share(ids: Tensor, lengths: Tensor, n: int = NGRAM) -> Tensor:
    """[N, C] completion ids, [N] lengths -> [N] float: 1 - distinct n-grams / n-grams (0 below two n-grams).

    >>> repeated_ngram_share(torch.tensor([[1, 2, 3, 1, 2, 3], [1, 2, 3, 4, 5, 6]]), torch.tensor([6, 6]), n=2)
    tensor([0.4000, 0.0000])
    """
    rows, width = ids.shape
    if width < n:
        return torch.zeros(rows)
    hashed = torch.zeros(rows, width - n + 1, dtype=torch.long)
    for i in range(n):  # polynomial hash of each window (int64 wraps around; collisions are negligible)
        hashed = hashed * 1_000_003 + ids[:, i : width - n + 1 + i].long()
    counts = (lengths - n + 1).clamp(min=0)  # [N]
    valid = torch.arange(hashed.shape[1]).unsqueeze(0) < counts.unsqueeze(1)  # [N, W], real n-grams first
    ordered = hashed.masked_fill(~valid, torch.iinfo(torch.long).max).sort(dim=1).values
    first = torch.ones_like(valid)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    distinct = (first & valid).sum(dim=1)
    share = 1.0 - distinct.float() / counts.clamp(min=1).float()
    return torch.where(counts >= 2, share, torch.zeros_like(share))


def dominant_groups(completions: list[str], group_size: int, share: float = 0.5) -> Tensor:
    """[B] float: 1 where a group's most common completion text takes more than `share` of its G completions.

    >>> dominant_groups(["a", "a", "a", "b", "a", "b", "c", "d"], 4)
    tensor([1., 0.])
    """
    groups = [completions[i : i + group_size] for i in range(0, len(completions), group_size)]
    return torch.tensor([float(Counter(g).most_common(1)[0][1] > share * len(g)) for g in groups])


def mean_or_nan(values: Tensor) -> float:
    return values.float().mean().item() if values.numel() else math.nan


def length_by_correctness(lengths: Tensor, correct: Tensor) -> dict[str, float]:
    """Mean completion length [N] of correct and of incorrect completions (NaN when there are none)."""
    return {
        "completion_length/correct": mean_or_nan(lengths[correct]),
        "completion_length/incorrect": mean_or_nan(lengths[~correct]),
    }


def metric_name(value: Any) -> str:
    """A data-source value as a metric path component: letters, digits, `_.-` only."""
    return re.sub(r"[^\w.-]+", "_", str(value)) or "_"


def source_metrics(sources: list[str], rewards: Tensor, lengths: Tensor, correct: Tensor | None) -> dict[str, float]:
    """Reward, accuracy (with a verifier), length and share of the batch per source value; tensors are [N]."""
    out: dict[str, float] = {}
    for value in sorted(set(sources)):
        rows = torch.tensor([s == value for s in sources])
        key = f"source/{metric_name(value)}"
        out[f"{key}/reward"] = rewards[rows].mean().item()
        out[f"{key}/completion_length"] = lengths[rows].mean().item()
        out[f"{key}/share"] = rows.float().mean().item()
        if correct is not None:
            out[f"{key}/accuracy"] = correct[rows].float().mean().item()
    return out


def _cell(value: float) -> float | None:
    return None if math.isnan(value) else value


def group_rows(scored: ScoredBatch, step: int, num_groups: int, verifier: str) -> list[dict[str, Any]]:
    """One row per completion of the first `num_groups` groups of a scored batch (see the module docstring)."""
    rollout, g = scored.rollout, scored.rollout.group_size
    correct = correct_mask(scored, verifier)
    lengths = rollout.completion_lengths.tolist()
    scalar_columns = [
        name for name, values in rollout.columns.items() if all(isinstance(v, str | int | float | bool) for v in values)
    ]
    rows = []
    for i in range(min(num_groups * g, len(scored))):
        row: dict[str, Any] = {
            "step": step,
            "group": i // g,
            "sample": i % g,
            "prompt": rollout.prompts[i],
            "completion": rollout.completions[i],
            "reward": scored.rewards[i].item(),
            **{f"reward/{n}": _cell(scored.reward_terms[i, j].item()) for j, n in enumerate(scored.reward_names)},
            "advantage": scored.advantages[i].item(),
            "length": int(lengths[i]),
            "truncated": bool(rollout.truncated[i]),
        }
        if correct is not None:
            row["correct"] = bool(correct[i])
        row |= {f"data/{name}": str(rollout.columns[name][i]) for name in scalar_columns}
        rows.append(row)
    return rows


class RolloutObserver:
    """Rollout metrics, tables and reward-hacking alarms for one GRPO run; `tracker` is disabled off rank 0."""

    def __init__(
        self,
        logger: LoggerConfig,
        evaluation: EvalConfig,
        source_column: str | None,
        reward_names: list[str],
        tracker: RunTracker,
    ):
        self.logger, self.source_column, self.tracker = logger, source_column, tracker
        self.verifier = evaluation.correctness
        detectors = default_detectors(reward_names, evaluation.correctness, evaluation.format_reward)
        self.monitor = AlarmMonitor(detectors, tracker.history())  # a resumed run keeps its history

    def alarms(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """Evaluate the alarms on this step's metrics (rank 0); each prints and alerts once, logged as alarm/<name>."""
        if not self.tracker.enabled:
            return {}
        fired = {}
        for alarm in self.monitor.update(metrics):
            text = f"deepseek-rl: ALARM at step {step} [{alarm.name}]: {alarm.message}"
            tqdm.write(text, file=sys.stderr)
            self.tracker.alert(f"{alarm.name} at step {step}", alarm.message)
            fired[f"alarm/{alarm.name}"] = 1.0
        return fired

    def log_table(self, step: int, scored: ScoredBatch) -> None:
        """The rollout table of this step, when one is due (rank 0)."""
        every = self.logger.rollout_table_every
        if not self.tracker.enabled or every == 0 or (step != 1 and step % every != 0):
            return
        rows = group_rows(scored, step, self.logger.rollout_table_groups, self.verifier)
        self.tracker.log_table(step, "rollouts", rows)
