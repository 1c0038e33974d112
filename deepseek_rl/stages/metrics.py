"""Step metrics, reduced across ranks before logging (every rank calls these; rank 0 logs)."""

from __future__ import annotations

from dataclasses import fields

import torch
from accelerate import Accelerator

from deepseek_rl.algo.advantages import zero_std_groups
from deepseek_rl.algo.reward_set import RewardSet
from deepseek_rl.algo.update import UpdateSums
from deepseek_rl.batch import RolloutBatch, ScoredBatch


def rollout_metrics(accelerator: Accelerator, scored: ScoredBatch, rewards: RewardSet) -> dict[str, float]:
    """Rewards, lengths and group statistics over the whole global batch."""
    rollout = scored.rollout
    device = accelerator.device
    total = accelerator.gather(scored.rewards.to(device))  # [N_global]
    terms = accelerator.gather(scored.reward_terms.to(device)).cpu()  # [N_global, F]
    lengths = accelerator.gather(rollout.completion_lengths.float().to(device))
    truncated = accelerator.gather(rollout.truncated.float().to(device))
    zero_std = accelerator.gather(zero_std_groups(scored.rewards, rollout.group_size).float().to(device))
    failures = accelerator.reduce(rewards.pop_failures().to(device), reduction="sum").cpu()  # [3, F] this step
    return tool_metrics(accelerator, rollout) | {
        "reward": total.mean().item(),
        "reward_std": total.std().item() if total.numel() > 1 else 0.0,
        **rewards.metrics(terms, failures),
        "completion_length/mean": lengths.mean().item(),
        "completion_length/min": lengths.min().item(),
        "completion_length/max": lengths.max().item(),
        "truncated": truncated.mean().item(),
        "zero_std_groups": zero_std.mean().item(),
    }


def update_metrics(accelerator: Accelerator, sums: UpdateSums, loss_type: str) -> dict[str, float]:
    """Loss and per-token statistics from the update's sums over micro-batches, summed over ranks."""
    device = accelerator.device
    names = [f.name for f in fields(UpdateSums)]
    stacked = torch.stack([getattr(sums, name).to(device).float().reshape(()) for name in names])
    summed = accelerator.reduce(stacked, reduction="sum").tolist()  # one collective for all sums
    total = dict(zip(names, summed, strict=True))
    total["engine_ratio_max"] = accelerator.reduce(sums.engine_ratio_max.to(device).float(), reduction="max").item()
    tokens = max(total["tokens"], 1.0)
    world = accelerator.num_processes
    engine = {}
    if total["engine_tokens"] > 0:  # the rollout engine gave log-probs (vLLM)
        compared = total["engine_tokens"]
        engine = {
            "rollout/logprob_abs_diff": total["engine_abs_diff_sum"] / compared,
            "rollout/is_ratio_mean": total["engine_ratio_sum"] / compared,
            "rollout/is_ratio_max": total["engine_ratio_max"],
            "rollout/is_ratio_capped": total["engine_ratio_capped"] / compared,
        }
    return engine | {
        # dapo's per-rank losses are shares of one global loss; the others are per-rank losses averaged by DDP
        "loss": total["loss"] if loss_type == "dapo" else total["loss"] / world,
        "kl": total["kl_sum"] / tokens,
        "entropy": total["entropy_sum"] / tokens,
        "ratio": total["ratio_sum"] / tokens,
        "clip/low": total["clipped_low"] / tokens,
        "clip/high": total["clipped_high"] / tokens,
        "grad_norm": total["grad_norm"] / world,
        "tokens": total["tokens"],  # completion tokens in the loss, all ranks
    }


def tool_metrics(accelerator: Accelerator, rollout: RolloutBatch) -> dict[str, float]:
    """Tool use over the global batch (multi-turn rollouts only): calls per trajectory, the share of trajectories
    that called the tool, calls that raised or timed out (counts this step), environment tokens per trajectory."""
    if rollout.tool_stats is None or rollout.tool_mask is None:
        return {}
    device = accelerator.device
    calls = accelerator.gather(rollout.tool_stats["calls"].float().to(device))
    errors = accelerator.reduce(rollout.tool_stats["errors"].sum().float().to(device), reduction="sum")
    timeouts = accelerator.reduce(rollout.tool_stats["timeouts"].sum().float().to(device), reduction="sum")
    env_tokens = accelerator.gather(rollout.tool_mask.sum(dim=1).float().to(device))
    return {
        "tools/calls_per_trajectory": calls.mean().item(),
        "tools/used_share": (calls > 0).float().mean().item(),
        "tools/errors": errors.item(),
        "tools/timeouts": timeouts.item(),
        "tools/env_tokens": env_tokens.mean().item(),
    }
