"""One policy update from scored rollouts: loss inputs, old/reference log-probs, micro-batched backward, step.

Old log-probs are computed (without grad, before the first pass) only when num_iterations > 1; with a single
pass the sampling policy is the current one and the ratio is exactly 1. Reference log-probs exist only when
kl_coef > 0. Gradients accumulate over the micro-batches of the step with the normaliser of the whole step
(see grpo.py), so the accumulated gradient equals the gradient of one big batch.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import Tensor, nn

from deepseek_rl.batch import LossInputs, ScoredBatch
from deepseek_rl.config import AlgorithmConfig, Config
from deepseek_rl.grpo import StepNormaliser, backward_scale, policy_loss
from deepseek_rl.logprobs import completion_logprobs


def build_loss_inputs(scored: ScoredBatch, mask_truncated: bool) -> LossInputs:
    rollout = scored.rollout
    loss_mask = rollout.completion_mask.float() * scored.loss_weight.unsqueeze(1)  # [N, C]
    if mask_truncated:
        loss_mask = loss_mask * (~rollout.truncated).float().unsqueeze(1)
    return LossInputs(
        input_ids=rollout.input_ids,
        attention_mask=rollout.attention_mask,
        loss_mask=loss_mask,
        advantages=scored.advantages.to(loss_mask.device),
        old_logprobs=None,
        ref_logprobs=None,
    )


@torch.no_grad()
def batched_logprobs(
    model: nn.Module, inputs: LossInputs, micro_batch_size: int, temperature: float, chunk: int
) -> Tensor:
    """Log-probs [N, C] of the completions under `model`, one micro-batch at a time, without grad."""
    parts = []
    for start in range(0, len(inputs), micro_batch_size):
        mb = inputs.rows(start, start + micro_batch_size)
        logp, _ = completion_logprobs(model, mb.input_ids, mb.attention_mask, mb.completion_length, temperature, chunk)
        parts.append(logp)
    return torch.cat(parts)


def add_old_and_ref_logprobs(
    policy: nn.Module, reference: nn.Module | None, inputs: LossInputs, cfg: Config
) -> LossInputs:
    alg, micro, temp = cfg.algorithm, cfg.trainer.micro_batch_size, cfg.rollout.temperature
    old = batched_logprobs(policy, inputs, micro, temp, alg.logprob_chunk_size) if alg.num_iterations > 1 else None
    ref = batched_logprobs(reference, inputs, micro, temp, alg.logprob_chunk_size) if reference is not None else None
    return inputs.with_logprobs(old, ref)


def step_normaliser(accelerator: Accelerator, inputs: LossInputs, cfg: Config) -> StepNormaliser:
    tokens = accelerator.reduce(inputs.loss_mask.sum().detach(), reduction="sum")
    return StepNormaliser(
        sequences_rank=len(inputs),
        micro_batches=len(inputs) // cfg.trainer.micro_batch_size,
        tokens_global=float(tokens),
        max_completion_length=cfg.rollout.max_completion_length,
    )


def update_policy(
    accelerator: Accelerator,
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    inputs: LossInputs,
    cfg: Config,
) -> dict[str, Tensor]:
    """num_iterations optimizer steps over the batch; returns sums over the last pass (for metrics) and grad norm."""
    alg: AlgorithmConfig = cfg.algorithm
    micro = cfg.trainer.micro_batch_size
    norm = step_normaliser(accelerator, inputs, cfg)
    # accelerate divides the loss by the accumulation steps; the normaliser already covers the whole step
    scale = backward_scale(alg.loss_type, accelerator.num_processes) * accelerator.gradient_accumulation_steps
    sums: dict[str, Tensor] = {}
    grad_norm = torch.tensor(float("nan"))
    for _ in range(alg.num_iterations):
        sums = {}
        for start in range(0, len(inputs), micro):
            mb = inputs.rows(start, start + micro)
            with accelerator.accumulate(policy):
                logprobs, entropy = completion_logprobs(
                    policy,
                    mb.input_ids,
                    mb.attention_mask,
                    mb.completion_length,
                    cfg.rollout.temperature,
                    alg.logprob_chunk_size,
                    with_entropy=True,
                    entropy_grad=alg.entropy_coef != 0,
                )
                terms = policy_loss(
                    logprobs, mb.old_logprobs, mb.ref_logprobs, entropy, mb.advantages, mb.loss_mask, alg, norm
                )
                accelerator.backward(terms.loss * scale)
                if accelerator.sync_gradients and cfg.optimizer.max_grad_norm is not None:
                    grad_norm = accelerator.clip_grad_norm_(policy.parameters(), cfg.optimizer.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            for key, value in vars(terms).items():
                sums[key] = sums.get(key, 0.0) + value.detach()
    sums["grad_norm"] = torch.as_tensor(grad_norm if grad_norm is not None else float("nan")).detach().float()
    return sums
