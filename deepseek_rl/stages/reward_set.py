"""Scoring rollouts: call every configured reward, combine them with weights, and summarise them as metrics.

Function rewards run through `deepseek_rl.rewards.runner.RewardRunner`: cheap text rewards and Python callables in
this process, the others in a pool of worker processes started at the first step that needs them and reused until
`close()` (called by the owner, or by a finalizer when the RewardSet is collected or the interpreter exits). Reward
models (`reward.models`) are scored here, on the trainer's device (`reward_model.ModelReward`).

A reward that returns None for a completion ("cannot be scored") contributes 0 to that completion's total and
is counted in `reward/<name>/none`; its mean and std are over the scored completions only. A sample whose reward
timed out, raised or returned a non-finite score (inf, or beyond float32's range) scores `reward.on_failure` and is
counted in `reward/<name>/timeouts` or `/errors` (`score` returns the counts with the scores; the step sums them over
its rounds and ranks); `reward/<name>/failed` is their share of the step's samples. With on_failure=0.0 (the
default) a failed sample enters the reward's mean and the total as 0; with on_failure=null it is left out of the
reward's mean and counts 0 in the total. The first failure of each reward is printed once, with where it was raised.
"""

from __future__ import annotations

import math
import sys
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from deepseek_rl.config.reward import RewardConfig
from deepseek_rl.rewards.runner import RewardRunner
from deepseek_rl.stages.reward_model import ModelReward


@dataclass
class RewardScores:
    """The scores of N completions by the F rewards, and how many calls failed."""

    terms: Tensor  # [N, F] float, NaN where a reward returned None
    failures: Tensor  # [3, F] float: timeouts, errors, samples scored


class RewardSet:
    """The recipe's weighted rewards, resolved once; `context` fills reward parameters by name
    (e.g. max_completion_length for soft_overlong and cosine) unless reward.args sets them. `functions` adds
    rewards given as Python callables (name -> callable, TRL's `reward_funcs`): they run in this process, weighted
    by `cfg.weights[name]` when it is there, else 1.0. Reward models are loaded on `device`."""

    def __init__(
        self,
        cfg: RewardConfig,
        context: dict[str, Any] | None = None,
        functions: Mapping[str, Callable[..., list[float | None]]] | None = None,
        device: torch.device | str = "cpu",
        report: bool = True,
    ):
        assert cfg.weights is not None
        weights = {**cfg.weights, **{n: cfg.weights.get(n, 1.0) for n in functions or {}}}
        self.names = list(weights)
        self.weights = torch.tensor([weights[n] for n in self.names], dtype=torch.float32)  # [F]
        self.models = {n: ModelReward(n, cfg.models[n], device, cfg.model_batch_size) for n in cfg.models}
        self.runner = RewardRunner(
            [n for n in self.names if n not in self.models],
            cfg.args,
            cfg.num_workers,
            cfg.timeout,
            cfg.on_failure,
            context={"sandbox": cfg.sandbox, **(context or {})},  # code rewards run as reward.sandbox says
            functions={**cfg.functions, **(functions or {})},
        )
        self.first_errors: dict[str, str] = {}  # reward name -> its first failure's message (this process)
        self.report = report  # print each reward's first failure (the main process of a run)
        self._finalizer = weakref.finalize(self, self.runner.close)

    def score(
        self, completions: list[str], columns: dict[str, list[Any]], group_size: int | None = None
    ) -> RewardScores:
        """Scores of N completions ([N, F] float with NaN for None) and the failures among them. `columns` are
        keyword arguments, each [N]; `group_size` consecutive completions share a prompt (group rewards)."""
        scores = self.runner.score(completions, columns, group_size)
        by_name: dict[str, list[float | None]] = dict(zip(scores.names, scores.values, strict=True))
        for name, model in self.models.items():
            by_name[name] = model.score(completions, columns) if completions else []
        failures = torch.zeros(3, len(self.names))  # [3, F]
        for j, name in enumerate(self.names):
            failures[2, j] = len(completions)
            if name in scores.names:
                failures[0, j] = scores.count(name, "timeout")
                failures[1, j] = scores.count(name, "error")
                self._note_first_failure(name, scores)
        columns_nf = [[math.nan if s is None else s for s in by_name[n]] for n in self.names]  # [F][N]
        terms = torch.tensor(columns_nf, dtype=torch.float32).reshape(len(self.names), len(completions)).T
        return RewardScores(terms.contiguous(), failures)

    def _note_first_failure(self, name: str, scores) -> None:
        if name in self.first_errors:
            return
        row = scores.names.index(name)
        failed = [(st, m) for st, m in zip(scores.status[row], scores.messages[row], strict=True) if st != "ok"]
        if not failed:
            return
        status, message = failed[0]
        self.first_errors[name] = f"{status}: {message}"
        if self.report:
            print(
                f"deepseek-rl: reward '{name}' failed on {len(failed)} of {len(scores.status[row])} samples "
                f"(first {status}: {message}); failed samples score reward.on_failure. Shown once per reward; "
                f"`deepseek-rl score --reward {name} --input rows.jsonl` shows each sample's outcome",
                file=sys.stderr,
                flush=True,
            )

    def total(self, terms: Tensor) -> Tensor:
        """Weighted sum of the terms [N, F] -> [N]; None (NaN) terms count as 0."""
        return (torch.nan_to_num(terms, nan=0.0) * self.weights).sum(dim=1)

    def metrics(self, terms: Tensor, failures: Tensor | None = None) -> dict[str, float]:
        """Per reward: mean, std, share of None over terms [N, F]; timeouts, errors and their share of the samples
        scored from failures [3, F]."""
        out: dict[str, float] = {}
        for j, name in enumerate(self.names):
            column = terms[:, j]
            scored = column[~column.isnan()]
            out[f"reward/{name}/mean"] = scored.mean().item() if len(scored) else math.nan
            out[f"reward/{name}/std"] = scored.std().item() if len(scored) > 1 else 0.0
            out[f"reward/{name}/none"] = 1.0 - len(scored) / max(len(column), 1)
            if failures is not None:
                out[f"reward/{name}/timeouts"] = failures[0, j].item()
                out[f"reward/{name}/errors"] = failures[1, j].item()
                out[f"reward/{name}/failed"] = (failures[0, j] + failures[1, j]).item() / max(failures[2, j].item(), 1)
        return out

    def close(self) -> None:
        """Stop the reward workers and drop the reward models; safe to call twice."""
        self._finalizer()
        for model in self.models.values():
            model.close()
