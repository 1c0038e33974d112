"""The rollout phase of a step: this rank's prompts -> sampled groups -> rewards -> advantages.

With DAPO's dynamic sampling, groups whose rewards all agree (zero variance: no learning signal) are dropped and
more prompts are sampled, round after round, until the rank has its B informative groups or the budget of extra
rounds (`algorithm.max_sampling_rounds`) is spent. Slots still empty then hold dropped groups with loss weight 0,
so shapes stay fixed across ranks and steps while those groups add nothing to the loss or its normaliser.
Round 0 uses the step's own prompts; round k draws from a stream seeded by (seed, step, k), and the sampling noise
is derived the same way, so a step is reproducible (resume, or 1 vs N ranks).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from deepseek_rl.batch import RolloutBatch, ScoredBatch
from deepseek_rl.config import Config
from deepseek_rl.data import PromptSet, rank_indices, step_indices
from deepseek_rl.grpo import group_advantages, zero_std_groups
from deepseek_rl.rollout import RowUniforms, generate_rollouts
from deepseek_rl.scoring import RewardSet


def derived_seed(seed: int, step: int, round_: int = 0) -> int:
    return (seed * 1_000_003 + step) * 101 + round_


def score_rollouts(rollout: RolloutBatch, rewards: RewardSet, cfg: Config) -> ScoredBatch:
    """Rewards [N, F] and [N], and group-relative advantages [N] for a rollout batch."""
    terms = rewards.score(rollout.completions, rollout.reward_columns())  # [N, F]
    total = rewards.total(terms)  # [N]
    advantages = group_advantages(total, rollout.group_size, cfg.algorithm.scale_rewards, cfg.algorithm.adv_eps)
    return ScoredBatch(
        rollout=rollout,
        reward_names=rewards.names,
        reward_terms=terms,
        rewards=total,
        advantages=advantages,
        loss_weight=torch.ones_like(total),
    )


@dataclass
class RolloutCollector:
    """What the rollout phase needs, fixed for the run."""

    cfg: Config
    tokenizer: PreTrainedTokenizerBase
    prompts: PromptSet
    rewards: RewardSet
    eos_ids: list[int]
    rank: int
    world_size: int

    def sample_round(self, model: nn.Module, step: int, round_: int, times: dict[str, float]) -> ScoredBatch:
        """One generation round on this rank; adds its generation and reward seconds to `times`."""
        cfg, seed = self.cfg, self.cfg.trainer.seed
        start = time.perf_counter()
        prompts_per_step = cfg.trainer.batch_size // cfg.algorithm.num_generations
        if round_ == 0:
            indices = step_indices(len(self.prompts), prompts_per_step, step, seed)
        else:
            indices = step_indices(len(self.prompts), prompts_per_step, 0, derived_seed(seed, step, round_))
        batch = self.prompts.batch(rank_indices(indices, self.rank, self.world_size), self.tokenizer.pad_token_id)
        per_rank = cfg.trainer.batch_size // self.world_size
        uniforms = RowUniforms(derived_seed(seed, step, round_), cfg.trainer.batch_size, self.rank * per_rank, per_rank)
        rollout = generate_rollouts(
            model, self.tokenizer, batch, cfg.rollout, cfg.algorithm.num_generations, self.eos_ids, uniforms
        )
        generated = time.perf_counter()
        scored = score_rollouts(rollout, self.rewards, cfg)
        times["time/generation"] += generated - start
        times["time/reward"] += time.perf_counter() - generated
        return scored

    def collect(self, model: nn.Module, step: int) -> tuple[ScoredBatch, dict[str, float]]:
        """This rank's scored groups for the step, and sampling statistics for the metrics."""
        g = self.cfg.algorithm.num_generations
        stats = {"time/generation": 0.0, "time/reward": 0.0}
        scored = self.sample_round(model, step, 0, stats)
        stats["zero_std_groups"] = zero_std_groups(scored.rewards, g).float().mean().item()
        if not self.cfg.algorithm.dynamic_sampling:
            return scored, stats
        wanted = len(scored) // g
        kept, dropped, round_ = [], [], 0
        while True:
            flat = zero_std_groups(scored.rewards, g)  # [B]
            kept.append(scored.select_groups((~flat).nonzero().flatten()))
            dropped.append(scored.select_groups(flat.nonzero().flatten()))
            have = sum(len(k) for k in kept) // g
            if have >= wanted or round_ == self.cfg.algorithm.max_sampling_rounds:
                break
            round_ += 1
            scored = self.sample_round(model, step, round_, stats)
        batch = ScoredBatch.concat(kept).select_groups(torch.arange(min(have, wanted)))
        if have < wanted:  # budget spent: fill with dropped groups that do not train
            filler = ScoredBatch.concat(dropped).select_groups(torch.arange(wanted - have))
            filler.loss_weight = torch.zeros_like(filler.loss_weight)
            batch = ScoredBatch.concat([batch, filler])
        stats["dynamic_sampling/rounds"] = float(round_ + 1)
        stats["dynamic_sampling/groups_dropped"] = float(sum(len(d) for d in dropped) // g)
        stats["dynamic_sampling/unfilled_groups"] = float(max(wanted - have, 0))
        return batch, stats
