"""Group-relative advantages: each completion's reward against the other completions of its prompt.

For a prompt with G sampled completions and rewards r_1..r_G (contiguous rows of the batch):
  A_i = (r_i - mean(r)) / (std(r) + eps)                  scale_rewards=group (GRPO)
  A_i = (r_i - mean(r)) / (std of the whole batch + eps)  scale_rewards=batch (std over every rank's rewards)
  A_i =  r_i - mean(r)                                    scale_rewards=none (Dr. GRPO)
The std is the unbiased sample std (torch's default, as in TRL). A group whose rewards all agree gets advantage 0.

The baseline (`algorithm.advantage`):
  grpo          r_i - mean(r)                                     the group mean (above)
  rloo          r_i - mean_{j != i} r_j = G / (G - 1) (r_i - mean(r))   leave-one-out (Ahmadian et al., 2024)
  reinforce_pp  c_i = r_i - mean(r), then (c_i - mean(c)) / (std(c) + eps) over the whole global batch
                (REINFORCE++ with baseline, Hu et al., 2025; as verl's reinforce_plus_plus_baseline)
"""

from __future__ import annotations

import torch
from torch import Tensor


def group_advantages(
    rewards: Tensor,
    group_size: int,
    scale: str = "group",
    eps: float = 1e-4,
    batch_std: Tensor | None = None,
    baseline: str = "grpo",
) -> Tensor:
    """Group-relative advantages. rewards [N] with groups of `group_size` contiguous -> [N].

    `batch_std` (scale=batch): the std of the whole global batch, all ranks' rewards (default: of `rewards`).
    `baseline`: grpo or rloo (reinforce_pp normalises over the global batch: `batch_normalised`)."""
    grouped = rewards.view(-1, group_size)  # [B, G]
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if baseline == "rloo":
        centered = centered * (group_size / max(group_size - 1, 1))
    elif baseline != "grpo":
        raise ValueError(f"unknown baseline '{baseline}' (reinforce_pp: use batch_normalised)")
    if scale == "group":
        centered = centered / _nonzero(grouped.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        centered = centered / _nonzero((rewards.std() if batch_std is None else batch_std) + eps)
    elif scale != "none":
        raise ValueError(f"unknown advantage scaling '{scale}'")
    return centered.reshape(-1)


def _nonzero(denominator: Tensor) -> Tensor:
    """A zero-std group (all rewards equal) is centred to zeros; keep it zero rather than 0/0 when eps is 0."""
    return torch.where(denominator > 0, denominator, torch.ones_like(denominator))


def zero_std_groups(rewards: Tensor, group_size: int) -> Tensor:
    """[B] bool: groups whose rewards are all equal (they carry no learning signal)."""
    grouped = rewards.view(-1, group_size)
    return (grouped.max(dim=1).values - grouped.min(dim=1).values) == 0


def group_centered(rewards: Tensor, group_size: int) -> Tensor:
    """r_i - mean of its group: [N] -> [N] (REINFORCE++'s first step)."""
    grouped = rewards.view(-1, group_size)
    return (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)


def batch_normalised(centered: Tensor, everything: Tensor, eps: float = 1e-4) -> Tensor:
    """REINFORCE++ with baseline: this rank's group-centred rewards [N], whitened by the mean and std of `everything`
    (the group-centred rewards of every rank) -> [N].

    >>> batch_normalised(torch.tensor([1.0, -1.0]), torch.tensor([1.0, -1.0, 3.0, -3.0]), eps=0.0)
    tensor([ 0.3873, -0.3873])
    """
    return (centered - everything.mean()) / _nonzero(everything.std() + eps)
