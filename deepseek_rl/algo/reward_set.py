"""Scoring rollouts: call every configured reward, combine them with weights, and summarise them as metrics.

The rewards run through `deepseek_rl.rewards.runner.RewardRunner`: cheap text rewards in this process, the others
in a pool of worker processes started at the first step that needs them and reused until `close()` (called by the
owner, or by a finalizer when the RewardSet is collected or the interpreter exits).

A reward that returns None for a completion ("cannot be scored") contributes 0 to that completion's total and
is counted in `reward/<name>/none`; its mean and std are over the scored completions only. A sample whose reward
timed out or raised scores `reward.on_failure` and is counted in `reward/<name>/timeouts` or `/errors` (counts
since the previous `pop_failures()`, i.e. per step, summed over ranks by the metrics).
"""

from __future__ import annotations

import inspect
import math
import weakref
from typing import Any

import torch
from torch import Tensor

from deepseek_rl.config.schema import RewardConfig
from deepseek_rl.rewards import resolve_reward
from deepseek_rl.rewards.runner import RewardRunner


def scoring_args(cfg: RewardConfig, names: list[str | None]) -> dict[str, dict[str, Any]]:
    """reward.args for scoring `names` outside the training RewardSet (evaluation, rejection sampling), with
    reward.sandbox passed to the rewards that run code, so that they are isolated as configured."""
    names = [n for n in names if n is not None]
    args = {n: dict(cfg.args[n]) for n in names if n in cfg.args}
    for name in names:
        if "sandbox" in inspect.signature(resolve_reward(name)).parameters:
            args.setdefault(name, {}).setdefault("sandbox", cfg.sandbox)
    return args


class RewardSet:
    """The recipe's weighted rewards, resolved once; `context` fills reward parameters by name
    (e.g. max_completion_length for soft_overlong and cosine) unless reward.args sets them."""

    def __init__(self, cfg: RewardConfig, context: dict[str, Any] | None = None):
        self.names = list(cfg.weights)
        self.weights = torch.tensor([cfg.weights[n] for n in self.names], dtype=torch.float32)  # [F]
        context = {"sandbox": cfg.sandbox, **(context or {})}
        self.runner = RewardRunner(self.names, cfg.args, cfg.num_workers, cfg.timeout, cfg.on_failure, context=context)
        self.failures = torch.zeros(2, len(self.names))  # [2, F] timeouts, errors since pop_failures()
        self._finalizer = weakref.finalize(self, self.runner.close)

    def score(self, completions: list[str], columns: dict[str, list[Any]]) -> Tensor:
        """Scores of N completions -> [N, F] float with NaN for None. `columns` are keyword arguments, each [N]."""
        scores = self.runner.score(completions, columns)
        for j, name in enumerate(self.names):
            self.failures[0, j] += scores.count(name, "timeout")
            self.failures[1, j] += scores.count(name, "error")
        return torch.tensor(
            [[math.nan if s is None else s for s in row] for row in zip(*scores.values, strict=True)],
            dtype=torch.float32,
        ).reshape(len(completions), len(self.names))

    def pop_failures(self) -> Tensor:
        """[2, F] timeouts and errors counted since the last call, then reset."""
        failures, self.failures = self.failures, torch.zeros_like(self.failures)
        return failures

    def total(self, terms: Tensor) -> Tensor:
        """Weighted sum of the terms [N, F] -> [N]; None (NaN) terms count as 0."""
        return (torch.nan_to_num(terms, nan=0.0) * self.weights).sum(dim=1)

    def metrics(self, terms: Tensor, failures: Tensor | None = None) -> dict[str, float]:
        """Per reward: mean, std, share of None over terms [N, F]; timeouts and errors from failures [2, F]."""
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
        return out

    def close(self) -> None:
        """Stop the reward workers; safe to call twice."""
        self._finalizer()
