"""Scoring rollouts: call every configured reward, combine them with weights, and summarise them as metrics.

A reward that returns None for a completion ("cannot be scored") contributes 0 to that completion's total and
is counted in `reward/<name>/none`; its mean and std are over the scored completions only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from deepseek_rl.config import RewardConfig
from deepseek_rl.rewards import call_reward, resolve_reward


class RewardSet:
    """The recipe's weighted rewards, resolved once."""

    def __init__(self, cfg: RewardConfig):
        self.names = list(cfg.weights)
        self.weights = torch.tensor([cfg.weights[n] for n in self.names], dtype=torch.float32)  # [F]
        self.functions = [resolve_reward(n) for n in self.names]
        self.args = {n: dict(cfg.args.get(n, {})) for n in self.names}

    def score(self, completions: list[str], columns: dict[str, list[Any]]) -> Tensor:
        """Scores of N completions -> [N, F] float with NaN for None. `columns` are keyword arguments, each [N]."""
        terms = [
            call_reward(n, f, completions, self.args[n], columns)
            for n, f in zip(self.names, self.functions, strict=True)
        ]
        return torch.tensor(
            [[math.nan if s is None else s for s in row] for row in zip(*terms, strict=True)], dtype=torch.float32
        )

    def total(self, terms: Tensor) -> Tensor:
        """Weighted sum of the terms [N, F] -> [N]; None (NaN) terms count as 0."""
        return (torch.nan_to_num(terms, nan=0.0) * self.weights).sum(dim=1)

    def metrics(self, terms: Tensor) -> dict[str, float]:
        out: dict[str, float] = {}
        for j, name in enumerate(self.names):
            column = terms[:, j]
            scored = column[~column.isnan()]
            out[f"reward/{name}/mean"] = scored.mean().item() if len(scored) else math.nan
            out[f"reward/{name}/std"] = scored.std().item() if len(scored) > 1 else 0.0
            out[f"reward/{name}/none"] = 1.0 - len(scored) / max(len(column), 1)
        return out
