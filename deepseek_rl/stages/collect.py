"""The rollout phase of a GRPO step: this rank's prompts -> sampled groups -> rewards -> advantages.

With DAPO's dynamic sampling, groups whose rewards all agree (zero variance: no learning signal) are dropped and
more prompts are sampled, round after round, until the rank has its B informative groups or the budget of extra
rounds (`algorithm.max_sampling_rounds`) is spent. Slots still empty then hold dropped groups with loss weight 0,
so shapes stay fixed across ranks and steps while those groups add nothing to the loss or its normaliser.
Round 0 uses the step's own prompts; round k draws from a stream seeded by (seed, step, k), and the sampling noise
is derived the same way, so a step is reproducible (resume, or 1 vs N ranks).

Advantages are computed once the batch is final; with `scale_rewards=batch` the std is that of the whole global
batch (every rank's rewards gathered), as in TRL, so N ranks compute the advantages one process would.

`collect` returns values: the scored batch and `RolloutStats`, what this rank's rollout phase measured (seconds,
the round-0 groups whose rewards all agree, the rewards' failures over every round, dynamic sampling's counts);
metrics.py reduces them over ranks with the rest of the step, once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from deepseek_rl.algo.advantages import batch_normalised, group_advantages, group_centered, zero_std_groups
from deepseek_rl.batch import RolloutBatch, ScoredBatch
from deepseek_rl.config.plan import BatchPlan
from deepseek_rl.config.rollout import RolloutConfig
from deepseek_rl.config.schema import AlgorithmConfig
from deepseek_rl.data.prompts import PromptSet, rank_indices, step_indices
from deepseek_rl.rollout.engine import RolloutEngine
from deepseek_rl.rollout.seeds import RowNoise, step_seed
from deepseek_rl.stages.reward_set import RewardSet


@dataclass
class RolloutStats:
    """What one rank's rollout phase measured; metrics.py reduces it over ranks with the rest of the step."""

    generation_seconds: float = 0.0
    reward_seconds: float = 0.0
    first_round_zero_std: Tensor | None = None  # [B] bool: the step's own groups whose rewards all agree
    reward_failures: Tensor | None = None  # [3, F] timeouts, errors, samples scored, over every round
    rounds: int = 1  # generation rounds (dynamic sampling)
    groups_dropped: int = 0
    unfilled_groups: int = 0
    dynamic_sampling: bool = False

    def add_failures(self, failures: Tensor) -> None:
        self.reward_failures = failures if self.reward_failures is None else self.reward_failures + failures


def score_rollouts(rollout: RolloutBatch, rewards: RewardSet) -> tuple[ScoredBatch, Tensor]:
    """Rewards [N, F] and [N] for a rollout batch, and the rewards' failures [3, F]; advantages are filled in once
    the batch is final."""
    scores = rewards.score(rollout.completions, rollout.reward_columns(), rollout.group_size)
    total = rewards.total(scores.terms)  # [N]
    scored = ScoredBatch(
        rollout=rollout,
        reward_names=rewards.names,
        reward_terms=scores.terms,
        rewards=total,
        advantages=torch.zeros_like(total),
        loss_weight=torch.ones_like(total),
    )
    return scored, scores.failures


def advantages(
    rewards: Tensor, algorithm: AlgorithmConfig, group_size: int, gather: Callable[[Tensor], Tensor] = lambda t: t
) -> Tensor:
    """[N] advantages of these rows; `gather` collects a tensor over every rank for the batch statistics
    (scale_rewards=batch, reinforce_pp); identity when the rows are the whole batch."""
    alg, g = algorithm, group_size
    if alg.advantage == "reinforce_pp":
        centered = group_centered(rewards, g)
        return batch_normalised(centered, gather(centered), alg.adv_eps)
    batch_std = gather(rewards).std() if alg.scale_rewards == "batch" else None
    return group_advantages(rewards, g, alg.scale_rewards, alg.adv_eps, batch_std, alg.advantage)


@dataclass
class RolloutCollector:
    """What the rollout phase needs, fixed for the run. `gather` collects a tensor from every rank (identity on
    one process), for the batch std."""

    plan: BatchPlan
    rank: int
    seed: int
    rollout: RolloutConfig
    algorithm: AlgorithmConfig
    prompts: PromptSet
    rewards: RewardSet
    pad_id: int
    gather: Callable[[Tensor], Tensor]

    def sample_round(self, engine: RolloutEngine, step: int, round_: int, stats: RolloutStats) -> ScoredBatch:
        """One generation round on this rank; adds its seconds and the rewards' failures to `stats`."""
        plan, start = self.plan, time.perf_counter()
        if round_ == 0:
            indices = step_indices(len(self.prompts), plan.prompts_per_step, step, self.seed)
        else:
            indices = step_indices(len(self.prompts), plan.prompts_per_step, 0, step_seed(self.seed, step, round_))
        batch = self.prompts.batch(rank_indices(indices, self.rank, plan.world_size), self.pad_id)
        noise = RowNoise(step_seed(self.seed, step, round_), plan.rows_per_step, plan.first_row(self.rank))
        rollout = engine.generate(batch, plan.group_size, self.rollout, noise)
        generated = time.perf_counter()
        scored, failures = score_rollouts(rollout, self.rewards)
        stats.generation_seconds += generated - start
        stats.reward_seconds += time.perf_counter() - generated
        stats.add_failures(failures)
        return scored

    def collect(self, engine: RolloutEngine, step: int) -> tuple[ScoredBatch, RolloutStats]:
        """This rank's scored groups for the step with their advantages, and what the rollout phase measured.
        Call inside `engine.session()`."""
        g = self.plan.group_size
        stats = RolloutStats(dynamic_sampling=self.algorithm.dynamic_sampling)
        scored = self.sample_round(engine, step, 0, stats)
        stats.first_round_zero_std = zero_std_groups(scored.rewards, g)
        if self.algorithm.dynamic_sampling:
            scored = self.refill(engine, step, scored, stats)
        scored.advantages = self.advantages(scored.rewards)
        return scored, stats

    def advantages(self, rewards: Tensor) -> Tensor:
        """[N] this rank's advantages; the batch statistics (scale_rewards=batch, reinforce_pp) span every rank."""
        return advantages(rewards, self.algorithm, self.plan.group_size, self.gather)

    def refill(self, engine: RolloutEngine, step: int, scored: ScoredBatch, stats: RolloutStats) -> ScoredBatch:
        """Dynamic sampling: replace zero-variance groups by informative ones from more rounds (module docstring)."""
        g = self.plan.group_size
        wanted = len(scored) // g
        kept, dropped, round_ = [], [], 0
        while True:
            flat = zero_std_groups(scored.rewards, g)  # [B]
            kept.append(scored.select_groups((~flat).nonzero().flatten()))
            dropped.append(scored.select_groups(flat.nonzero().flatten()))
            have = sum(len(k) for k in kept) // g
            if have >= wanted or round_ == self.algorithm.max_sampling_rounds:
                break
            round_ += 1
            scored = self.sample_round(engine, step, round_, stats)
        batch = ScoredBatch.concat(kept).select_groups(torch.arange(min(have, wanted)))
        if have < wanted:  # budget spent: fill with dropped groups that do not train
            filler = ScoredBatch.concat(dropped).select_groups(torch.arange(wanted - have))
            filler.loss_weight = torch.zeros_like(filler.loss_weight)
            batch = ScoredBatch.concat([batch, filler])
        stats.rounds = round_ + 1
        stats.groups_dropped = sum(len(d) for d in dropped) // g
        stats.unfilled_groups = max(wanted - have, 0)
        return batch
