"""One policy update from scored rollouts: loss inputs, old/reference log-probs, micro-batched backward, step.

Old log-probs are computed (without grad, before the first pass) only when num_iterations > 1; with a single
pass the sampling policy is the current one and the ratio is exactly 1. Reference log-probs exist only when
kl_coef > 0. Gradients accumulate over the micro-batches of the step with the normaliser of the whole step
(see losses.py), so the accumulated gradient equals the gradient of one big batch. Each pass over the batch is one
optimizer step and one LR-scheduler step (the schedule is sized by max_steps x num_iterations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from accelerate import Accelerator
from torch import Tensor, nn

from deepseek_rl.algo.logprobs import completion_logprobs
from deepseek_rl.algo.losses import LossTerms, StepNormaliser, backward_scale, policy_loss
from deepseek_rl.batch import LossInputs, ScoredBatch
from deepseek_rl.config.plan import BatchPlan
from deepseek_rl.config.schema import AlgorithmConfig
from deepseek_rl.errors import NumericalError


@dataclass(frozen=True)
class UpdateSettings:
    """What the update reads from the config, fixed for the run."""

    algorithm: AlgorithmConfig
    plan: BatchPlan
    temperature: float  # the sampling temperature: log-probs are those of the distribution that was sampled
    max_completion_length: int  # dr_grpo's normaliser
    max_grad_norm: float | None
    padding_free: bool = False  # micro-batches run packed (logprobs.packed_logprobs)
    max_tokens_per_micro_batch: int | None = None  # token-budget micro-batches instead of micro_batch_size rows
    # the old policy of the ratio recomputed before the update even with one pass (with one pass the policy's own
    # detached log-probs are it already: the proximal policy of decoupled PPO costs no extra forward)
    proximal: bool = False


def build_loss_inputs(
    scored: ScoredBatch, mask_truncated: bool, device: torch.device | str | None = None
) -> LossInputs:
    """The loss inputs on the trainer's `device` (default: the rollout's), wherever the batch was sampled and scored:
    the engine's device, the CPU for rewards, and the CPU too for a batch an asynchronous worker sent."""
    rollout = scored.rollout
    device = rollout.completion_ids.device if device is None else torch.device(device)
    weight = scored.loss_weight.to(device).unsqueeze(1)
    loss_mask = rollout.sampled_mask.to(device).float() * weight  # [N, C]: tool outputs never count
    if mask_truncated:
        loss_mask = loss_mask * (~rollout.truncated.to(device)).float().unsqueeze(1)
    sampling = rollout.sampling_logprobs
    return LossInputs(
        input_ids=rollout.input_ids.to(device),
        attention_mask=rollout.attention_mask.to(device),
        loss_mask=loss_mask,
        advantages=scored.advantages.to(device),
        old_logprobs=None,
        ref_logprobs=None,
        sampling_logprobs=None if sampling is None else sampling.to(device),
    )


def token_budget_bins(lengths: list[int], budget: int, packed: bool) -> list[list[int]]:
    """Rows into micro-batches of at most `budget` tokens, longest first (first fit decreasing): a packed micro-batch
    costs the sum of its rows' lengths, a padded one its rows x its longest row; a row over the budget alone gets its
    own. lengths [N] -> lists of row indices.

    >>> token_budget_bins([5, 1, 4, 2, 3], 6, packed=True)
    [[0, 1], [2, 3], [4]]
    >>> token_budget_bins([5, 1, 4, 2, 3], 10, packed=False)
    [[0, 2], [4, 3, 1]]
    """
    bins: list[list[int]] = []
    costs: list[int] = []
    for row in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for b, members in enumerate(bins):
            cost = costs[b] + lengths[row] if packed else (len(members) + 1) * lengths[members[0]]
            if cost <= budget:
                members.append(row)
                costs[b] = cost
                break
        else:
            bins.append([row])
            costs.append(lengths[row])
    return bins


def split_to(bins: list[list[int]], count: int) -> list[list[int]]:
    """Split the largest micro-batches in halves until there are `count` (every rank must run as many).

    >>> split_to([[0, 1, 2], [3]], 3)
    [[0], [1, 2], [3]]
    """
    bins = [list(b) for b in bins]
    while len(bins) < count:
        largest = max(range(len(bins)), key=lambda b: len(bins[b]))
        if len(bins[largest]) < 2:
            raise ValueError(f"cannot make {count} micro-batches of {sum(map(len, bins))} rows")
        half = len(bins[largest]) // 2
        bins[largest : largest + 1] = [bins[largest][:half], bins[largest][half:]]
    return bins


def micro_batches(accelerator: Accelerator | None, inputs: LossInputs, settings: UpdateSettings) -> list[Tensor]:
    """This rank's rows [K] of each micro-batch: micro_batch_size rows in order, or token-budget micro-batches, as
    many on every rank as the rank that needs most."""
    n, budget = len(inputs), settings.max_tokens_per_micro_batch
    if budget is None:
        micro = settings.plan.micro_batch_size
        return [torch.arange(start, min(start + micro, n)) for start in range(0, n, micro)]
    bins = token_budget_bins(inputs.attention_mask.sum(dim=1).tolist(), budget, settings.padding_free)
    count = len(bins)
    if accelerator is not None and accelerator.num_processes > 1:
        count = int(accelerator.reduce(torch.tensor(count, device=accelerator.device), reduction="max"))
    return [torch.tensor(sorted(b)) for b in split_to(bins, count)]


@torch.no_grad()
def batched_logprobs(
    model: nn.Module, inputs: LossInputs, batches: list[Tensor], temperature: float, chunk: int, packed: bool = False
) -> Tensor:
    """Log-probs [N, C] of the completions under `model`, one micro-batch (rows of `batches`) at a time, no grad."""
    out = torch.zeros(inputs.loss_mask.shape, dtype=torch.float32, device=inputs.loss_mask.device)
    for rows in batches:
        mb = inputs.select(rows)
        logp, _ = completion_logprobs(
            model, mb.input_ids, mb.attention_mask, mb.completion_length, temperature, chunk, packed=packed
        )
        out[rows.to(out.device), : mb.completion_length] = logp.to(out.device)
    return out


def add_old_and_ref_logprobs(
    policy: nn.Module,
    reference: nn.Module | None,
    inputs: LossInputs,
    settings: UpdateSettings,
    accelerator: Accelerator | None = None,
) -> LossInputs:
    alg, temp, packed = settings.algorithm, settings.temperature, settings.padding_free
    batches = micro_batches(accelerator, inputs, settings)
    chunk = alg.logprob_chunk_size
    with_old = alg.num_iterations > 1 or settings.proximal
    old = batched_logprobs(policy, inputs, batches, temp, chunk, packed) if with_old else None
    ref = batched_logprobs(reference, inputs, batches, temp, chunk, packed) if reference is not None else None
    return inputs.with_logprobs(old, ref)


def step_normaliser(
    accelerator: Accelerator, inputs: LossInputs, settings: UpdateSettings, micro_batches: int
) -> StepNormaliser:
    tokens = accelerator.reduce(inputs.loss_mask.sum().detach(), reduction="sum")
    return StepNormaliser(
        sequences_rank=len(inputs),
        micro_batches=micro_batches,
        tokens_global=float(tokens),
        max_completion_length=settings.max_completion_length,
    )


def update_policy(
    accelerator: Accelerator,
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    inputs: LossInputs,
    settings: UpdateSettings,
) -> LossTerms:
    """num_iterations optimizer steps over the batch; returns the last pass's loss terms summed over its
    micro-batches (for metrics), with the last optimizer step's gradient norm."""
    alg = settings.algorithm
    batches = micro_batches(accelerator, inputs, settings)
    if settings.max_tokens_per_micro_batch is not None:  # this step's count (the same on every rank)
        accelerator.gradient_accumulation_steps = len(batches)
    norm = step_normaliser(accelerator, inputs, settings, len(batches))
    # accelerate divides the loss by the accumulation steps; the normaliser already covers the whole step
    scale = backward_scale(alg.loss_type, accelerator.num_processes) * accelerator.gradient_accumulation_steps
    sums: LossTerms | None = None
    grad_norm = torch.tensor(float("nan"))
    for _ in range(alg.num_iterations):
        sums = None
        for index, rows in enumerate(batches):
            mb = inputs.select(rows)
            with accelerator.accumulate(policy):
                logprobs, entropy = completion_logprobs(
                    policy,
                    mb.input_ids,
                    mb.attention_mask,
                    mb.completion_length,
                    settings.temperature,
                    alg.logprob_chunk_size,
                    with_entropy=True,
                    entropy_grad=alg.entropy_coef != 0,
                    packed=settings.padding_free,
                )
                terms = policy_loss(
                    logprobs,
                    mb.old_logprobs,
                    mb.ref_logprobs,
                    entropy,
                    mb.advantages,
                    mb.loss_mask,
                    alg,
                    norm,
                    mb.sampling_logprobs,
                )
                check_finite_loss(terms.loss, index, logprobs, entropy, mb)
                accelerator.backward(terms.loss * scale)
                grad_norm = optimizer_step(accelerator, policy, optimizer, scheduler, settings.max_grad_norm, grad_norm)
            sums = terms.plus(sums)
    grad = torch.as_tensor(grad_norm if grad_norm is not None else float("nan")).detach().float()
    return replace(sums, grad_norm=grad)


def check_finite_loss(
    loss: Tensor, micro_batch: int, logprobs: Tensor, entropy: Tensor | None, mb: LossInputs | None = None
) -> None:
    """Raise NumericalError, naming the micro-batch and the term that is not finite, before a non-finite loss is
    back-propagated (one host sync per micro-batch)."""
    if bool(torch.isfinite(loss)):
        return
    on = mb.loss_mask > 0 if mb is not None else torch.ones_like(logprobs, dtype=torch.bool)
    old, ref = (None, None) if mb is None else (mb.old_logprobs, mb.ref_logprobs)
    terms = {
        "the advantages": None if mb is None else mb.advantages,
        "the policy's log-probs": logprobs[on],
        "the old policy's log-probs": None if old is None else old[on],
        "the reference model's log-probs (KL term)": None if ref is None else ref[on],
        "the entropy": None if entropy is None else entropy[on],
    }
    bad = [name for name, value in terms.items() if value is not None and not bool(torch.isfinite(value).all())]
    cause = f"{', '.join(bad)} hold non-finite values" if bad else "every input is finite: the loss itself overflowed"
    raise NumericalError(
        f"the loss of micro-batch {micro_batch} is {loss.item()} ({cause}); the update stopped before it touched the "
        "weights and nothing was saved: resume from the last checkpoint (trainer.resume=auto), with a lower "
        "algorithm.lr if the log-probs diverged"
    )


def optimizer_step(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    max_grad_norm: float | None,
    grad_norm: Tensor,
) -> Tensor:
    """Inside `accelerator.accumulate`: at the end of an accumulation, clip and step optimizer and scheduler (the
    optimizer wrapper skips the step on other micro-batches). Returns the new grad norm, or the previous one.
    The gradient norm is computed at every step (clipping at max_grad_norm, or at infinity: none); a non-finite
    norm raises NumericalError before the optimizer touches the weights."""
    if accelerator.sync_gradients:
        limit = max_grad_norm if max_grad_norm is not None else math.inf
        norm = accelerator.clip_grad_norm_(model.parameters(), limit)
        if norm is not None:  # DeepSpeed clips inside its own step and returns None here
            grad_norm = norm
            if not bool(torch.isfinite(torch.as_tensor(norm))):
                optimizer.zero_grad()
                raise NumericalError(
                    f"the gradient norm is {float(norm)}: the optimizer step was skipped, the weights are unchanged "
                    "and nothing was saved; resume from the last checkpoint (trainer.resume=auto) with a lower "
                    "algorithm.lr"
                )
    optimizer.step()
    if accelerator.sync_gradients:
        scheduler.step()
    optimizer.zero_grad()
    return grad_norm
