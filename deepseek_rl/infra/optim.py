"""The optimizer and learning-rate schedule every training stage shares (GRPO, SFT, RFT), from `optimizer.*`.

AdamW over the trainable parameters (all of them, or a LoRA policy's adapters), fused into one kernel. The schedule
is a function of the optimizer step: linear warmup over `warmup` steps from lr / (warmup + 1) up to lr, then
constant, or linear or cosine decay that reaches 0 after exactly `total` optimizer steps. A stage sizes it in
optimizer steps: GRPO takes num_iterations optimizer steps per training step, so both its warmup and its total are
max_steps and warmup_steps times num_iterations.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from deepseek_rl.config.schema import OptimizerConfig


def build_optimizer(model: nn.Module, lr: float, cfg: OptimizerConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=lr,
        betas=(cfg.betas[0], cfg.betas[1]),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        fused=True,  # one kernel over all parameters (CPU and CUDA); 6x faster than the per-tensor loop on CPU
    )


def lr_factor(step: int, schedule: str, warmup: int, total: int) -> float:
    """The multiplier of the peak lr at optimizer step `step` (0-based; `total` is where decay ends).

    >>> [round(lr_factor(s, "linear", 1, 5), 3) for s in range(6)]
    [0.5, 1.0, 0.75, 0.5, 0.25, 0.0]
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def lr_schedule(
    optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, total: int, warmup: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """`optimizer.schedule` over `total` optimizer steps with `warmup` warmup steps (see the module docstring)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg.schedule, warmup, total))
