"""TRL's metric names for ours, so that dashboards built for TRL's GRPOTrainer read a deepseek-rl run
(`logger.metric_names=trl`, or `both`). metrics.jsonl always keeps our names; the trackers (wandb, TensorBoard,
MLflow) get the names chosen. docs/coming-from-trl-verl.md has the table.

    ours                          TRL
    reward, reward_std            reward, reward_std
    reward/<name>/mean, /std      rewards/<name>/mean, /std
    zero_std_groups               frac_reward_zero_std
    completion_length/mean|min|max  completions/mean_length|min_length|max_length
    truncated                     completions/clipped_ratio
    clip/low, clip/high           clip_ratio/low_mean, clip_ratio/high_mean
    entropy, kl, loss, grad_norm  the same
    lr                            learning_rate
    train/tokens                  num_tokens
    (a metric without a TRL name keeps ours)
"""

from __future__ import annotations

from typing import Any

SAME = {
    "reward": "reward",
    "reward_std": "reward_std",
    "zero_std_groups": "frac_reward_zero_std",
    "completion_length/mean": "completions/mean_length",
    "completion_length/min": "completions/min_length",
    "completion_length/max": "completions/max_length",
    "truncated": "completions/clipped_ratio",
    "clip/low": "clip_ratio/low_mean",
    "clip/high": "clip_ratio/high_mean",
    "lr": "learning_rate",
    "train/tokens": "num_tokens",
}


def trl_name(name: str) -> str:
    """TRL's name of one of our metrics (ours when TRL has none).

    >>> trl_name("reward/accuracy/mean"), trl_name("zero_std_groups"), trl_name("time/step")
    ('rewards/accuracy/mean', 'frac_reward_zero_std', 'time/step')
    """
    if name in SAME:
        return SAME[name]
    if name.startswith("reward/") and name.endswith(("/mean", "/std")):
        return "rewards/" + name[len("reward/") :]
    return name


def named(metrics: dict[str, Any], scheme: str) -> dict[str, Any]:
    """The metrics under `scheme`'s names: ours, trl, or both (TRL's added beside ours where they differ)."""
    if scheme == "ours":
        return metrics
    renamed = {trl_name(k): v for k, v in metrics.items()}
    return renamed if scheme == "trl" else {**metrics, **renamed}
