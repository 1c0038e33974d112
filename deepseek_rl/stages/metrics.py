"""A GRPO step's metrics, with every cross-rank reduction of the step made here, once (every rank calls
`step_metrics`; rank 0 logs what it returns).

Three collectives per step, whatever the number of metrics: one gather of a per-completion table (reward, reward
terms, length, truncation, the round-0 zero-std flag of its group, repeated n-grams, its group's dominance, the
verifier's verdict, tool calls and environment tokens), one sum of a vector of counts (the update's sums, the
rewards' failures, tool errors and timeouts, dynamic sampling's groups) and one max (the engine ratio's maximum,
dynamic sampling's rounds); plus a gather of the source names when `data.source_column` is set. Everything else is
arithmetic on those, identical on every rank. So a statistic measured on one rank (e.g. the share of zero-std
groups) is always the global one.
"""

from __future__ import annotations

import math
from dataclasses import fields

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import Tensor

from deepseek_rl.algo.losses import LossTerms
from deepseek_rl.batch import ScoredBatch
from deepseek_rl.stages.collect import RolloutStats
from deepseek_rl.stages.observability import (
    correct_mask,
    dominant_groups,
    length_by_correctness,
    repeated_ngram_share,
    source_metrics,
)
from deepseek_rl.stages.reward_set import RewardSet

ROW_COLUMNS = ("reward", "length", "truncated", "zero_std", "repetition", "dominant", "correct", "calls", "env")
SUMS = [f.name for f in fields(LossTerms) if f.name != "engine_ratio_max"]  # grad_norm included


def row_table(scored: ScoredBatch, stats: RolloutStats, verifier: str) -> Tensor:
    """This rank's per-completion values [N, len(ROW_COLUMNS) + F] (group values repeated over the group's rows;
    `correct` is NaN without a verifier)."""
    rollout, g = scored.rollout, scored.rollout.group_size
    n = len(scored)
    lengths = rollout.completion_lengths.float().cpu()
    zero_std = stats.first_round_zero_std if stats.first_round_zero_std is not None else torch.zeros(n // g)
    correct = correct_mask(scored, verifier)
    tools = rollout.tool_stats is not None and rollout.tool_mask is not None
    columns = [
        scored.rewards.float().cpu(),
        lengths,
        rollout.truncated.float().cpu(),
        zero_std.float().cpu().repeat_interleave(g)[:n],
        repeated_ngram_share(rollout.completion_ids.cpu(), rollout.completion_lengths.cpu()),
        dominant_groups(rollout.completions, g).repeat_interleave(g)[:n],
        torch.full((n,), math.nan) if correct is None else correct.float().cpu(),
        rollout.tool_stats["calls"].float().cpu() if tools else torch.zeros(n),
        rollout.tool_mask.sum(dim=1).float().cpu() if tools else torch.zeros(n),
    ]
    return torch.cat([torch.stack(columns, dim=1), scored.reward_terms.float().cpu()], dim=1)


def count_vector(sums: LossTerms, stats: RolloutStats, scored: ScoredBatch, num_rewards: int) -> Tensor:
    """This rank's counts, summed over ranks: the update's sums, the rewards' failures [3 x F], tool errors and
    timeouts, dynamic sampling's dropped and unfilled groups."""
    failures = stats.reward_failures if stats.reward_failures is not None else torch.zeros(3, num_rewards)
    tool_stats = scored.rollout.tool_stats
    tools = [tool_stats["errors"].sum(), tool_stats["timeouts"].sum()] if tool_stats is not None else [0.0, 0.0]
    values = [getattr(sums, name).detach().float().cpu().reshape(()) for name in SUMS]
    extra = torch.tensor([float(t) for t in tools] + [float(stats.groups_dropped), float(stats.unfilled_groups)])
    return torch.cat([torch.stack(values), failures.flatten().float(), extra])


def step_metrics(
    accelerator: Accelerator,
    scored: ScoredBatch,
    stats: RolloutStats,
    sums: LossTerms,
    rewards: RewardSet,
    loss_type: str,
    verifier: str,
    source_column: str | None = None,
) -> dict[str, float]:
    """Every metric of the step over all ranks, from one gather, one sum and one max (module docstring)."""
    device, f = accelerator.device, len(rewards.names)
    table = accelerator.gather(row_table(scored, stats, verifier).to(device)).cpu()  # [N_global, 9 + F]
    counts = accelerator.reduce(count_vector(sums, stats, scored, f).to(device), reduction="sum").cpu()
    maxima = torch.tensor([sums.engine_ratio_max.detach().float().cpu().item(), float(stats.rounds)])
    maxima = accelerator.reduce(maxima.to(device), reduction="max").cpu()
    sources = None
    if source_column is not None:
        local = [str(v) for v in scored.rollout.columns[source_column]]
        sources = gather_object(local) if accelerator.num_processes > 1 else local
    rows = dict(zip(ROW_COLUMNS, table[:, : len(ROW_COLUMNS)].T, strict=True))
    terms = table[:, len(ROW_COLUMNS) :]
    update = dict(zip(SUMS, counts[: len(SUMS)].tolist(), strict=True))
    failures = counts[len(SUMS) : len(SUMS) + 3 * f].reshape(3, f)
    tool_errors, tool_timeouts, dropped, unfilled = counts[len(SUMS) + 3 * f :].tolist()
    update["engine_ratio_max"] = maxima[0].item()
    out = rollout_values(rows, terms, rewards, failures)
    out |= update_values(update, loss_type, accelerator.num_processes)
    if scored.rollout.tool_stats is not None and scored.rollout.tool_mask is not None:
        out |= {
            "tools/calls_per_trajectory": rows["calls"].mean().item(),
            "tools/used_share": (rows["calls"] > 0).float().mean().item(),
            "tools/errors": tool_errors,
            "tools/timeouts": tool_timeouts,
            "tools/env_tokens": rows["env"].mean().item(),
        }
    if stats.dynamic_sampling:
        out |= {
            "dynamic_sampling/rounds": maxima[1].item(),
            "dynamic_sampling/groups_dropped": dropped,
            "dynamic_sampling/unfilled_groups": unfilled,
        }
    correct = None if torch.isnan(rows["correct"]).all() else rows["correct"] == 1.0
    if correct is not None:
        out |= length_by_correctness(rows["length"], correct)
    if sources is not None:
        out |= source_metrics(sources, rows["reward"], rows["length"], correct)
    return out


def rollout_values(rows: dict[str, Tensor], terms: Tensor, rewards: RewardSet, failures: Tensor) -> dict[str, float]:
    """Rewards, lengths and group statistics of the global batch (gathered rows)."""
    total = rows["reward"]
    return {
        "reward": total.mean().item(),
        "reward_std": total.std().item() if total.numel() > 1 else 0.0,
        **rewards.metrics(terms, failures),
        "completion_length/mean": rows["length"].mean().item(),
        "completion_length/min": rows["length"].min().item(),
        "completion_length/max": rows["length"].max().item(),
        "truncated": rows["truncated"].mean().item(),
        "zero_std_groups": rows["zero_std"].mean().item(),  # the step's own prompts (round 0), every rank's
        "completions/repetition": rows["repetition"].mean().item(),
        "completions/dominant_groups": rows["dominant"].mean().item(),
    }


def update_values(total: dict[str, float], loss_type: str, world: int) -> dict[str, float]:
    """Loss and per-token statistics from the update's sums over micro-batches and ranks."""
    tokens = max(total["tokens"], 1.0)
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
