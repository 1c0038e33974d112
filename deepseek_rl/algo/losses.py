"""The group-relative policy objective as small pure functions of tensors, and the fine-tuning loss.

For a prompt q with G sampled completions o_1..o_G and rewards r_1..r_G:

  advantage      A_i from the group's rewards (advantages.py)
  ratio          rho_{i,t} = pi(o_{i,t}) / pi_old(o_{i,t})          importance_sampling=token
                 s_i = exp(mean_t log rho_{i,t})                    sequence (GSPO), broadcast to tokens
                 s_{i,t} = sg[s_i] * pi(o_{i,t}) / sg[pi(o_{i,t})]  sequence_token (GSPO-token)
  surrogate      l_{i,t} = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)     policy_loss=clip
                 with dual_clip c and A < 0: l_{i,t} = min(l_{i,t}, -c A)
                 l_{i,t} = -sg[min(rho, 1 + eps_high)] A log pi(o_{i,t})          cispo (MiniMax-M1)
                 l_{i,t} = -sigmoid(tau (rho - 1)) (4 / tau) A                      sapo, tau = tau_pos if A > 0
                                                                                    else tau_neg
  KL penalty     + beta * k(pi, pi_ref) per token (k1, k2 or k3 estimator); - entropy_coef * entropy

Aggregation (`loss_type`) turns per-token losses into the step loss; the normaliser always covers the whole
optimizer step (all micro-batches), so accumulating micro-batches gives the same gradient as one big batch:
  grpo     mean over sequences of each sequence's token mean
  bnpo     token mean within each micro-batch, averaged over micro-batches
  dr_grpo  token sum / (sequences x max_completion_length)
  dapo     token sum / completion tokens in the whole step across all ranks
The `*_rank` quantities are per rank; gradients are averaged over ranks by DDP/DeepSpeed, which `backward_scale`
undoes for `dapo`, whose normaliser is already global.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from deepseek_rl.config.schema import AlgorithmConfig


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1/k2/k3). [M, C] -> [M, C]."""
    log_ratio = ref_logprobs - logprobs  # log(pi_ref / pi)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        return torch.exp(log_ratio) - log_ratio - 1
    raise ValueError(f"unknown KL estimator '{estimator}'")


def importance_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, level: str = "token") -> Tensor:
    """The ratio pi / pi_old per token ([M, C]); sequence levels use GSPO's length-normalised sequence ratio."""
    log_ratio = logprobs - old_logprobs  # [M, C]
    if level == "token":
        return torch.exp(log_ratio)
    seq_log_ratio = (log_ratio * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # [M]
    if level == "sequence":
        return torch.exp(seq_log_ratio).unsqueeze(1).expand_as(logprobs)
    if level == "sequence_token":
        return torch.exp(seq_log_ratio.detach().unsqueeze(1) + logprobs - logprobs.detach())
    raise ValueError(f"unknown importance sampling level '{level}'")


def clipped_surrogate(
    ratio: Tensor, advantages: Tensor, eps_low: float, eps_high: float, dual_clip: float | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token clipped policy loss. ratio [M, C], advantages [M] -> (loss [M, C], clipped_low, clipped_high).

    clipped_low / clipped_high mark tokens where the clip is active (the gradient through the ratio is zero):
    ratio < 1 - eps_low with A < 0, and ratio > 1 + eps_high with A > 0.
    """
    adv = advantages.unsqueeze(1)  # [M, 1]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    loss = -torch.min(unclipped, clipped)
    if dual_clip is not None:
        loss = torch.where(adv < 0, torch.min(loss, -dual_clip * adv), loss)
    clipped_low = (ratio < 1 - eps_low) & (adv < 0)
    clipped_high = (ratio > 1 + eps_high) & (adv > 0)
    return loss, clipped_low, clipped_high


def cispo_surrogate(ratio: Tensor, logprobs: Tensor, advantages: Tensor, eps_high: float) -> tuple[Tensor, Tensor]:
    """CISPO: every token keeps a gradient, weighted by its importance ratio capped at 1 + eps_high (detached):
    l = -sg[min(rho, 1 + eps_high)] A log pi. ratio, logprobs [M, C], advantages [M] -> (loss [M, C], capped [M, C]).

    >>> ratio, logprobs = torch.tensor([[0.5, 3.0]]), torch.tensor([[-1.0, -2.0]])
    >>> cispo_surrogate(ratio, logprobs, torch.tensor([2.0]), 1.0)
    (tensor([[1., 8.]]), tensor([[False,  True]]))
    """
    weight = ratio.clamp(max=1 + eps_high).detach()
    return -weight * advantages.unsqueeze(1) * logprobs, ratio > 1 + eps_high


def sapo_surrogate(ratio: Tensor, advantages: Tensor, tau_pos: float, tau_neg: float) -> Tensor:
    """SAPO: a smooth gate instead of the hard clip, l = -sigmoid(tau (rho - 1)) (4 / tau) A, with the temperature
    tau_pos for A > 0 and tau_neg otherwise. At rho = 1 its gradient in rho is A, as the unclipped surrogate's; far
    from 1 it fades instead of dropping to zero. ratio [M, C], advantages [M] -> [M, C].

    >>> sapo_surrogate(torch.tensor([[1.0, 1.0]]), torch.tensor([1.0]), 2.0, 1.0)
    tensor([[-1., -1.]])
    """
    adv = advantages.unsqueeze(1)
    tau = torch.where(adv > 0, torch.full_like(adv, tau_pos), torch.full_like(adv, tau_neg))
    return -torch.sigmoid(tau * (ratio - 1)) * (4 / tau) * adv


def engine_is_weight(to_engine: Tensor, mask: Tensor, cap: float, mode: str) -> tuple[Tensor, Tensor]:
    """The weight on each token's policy-gradient term against the rollout engine's sampling distribution, and where
    the cap acted. to_engine [M, C] = pi_old / pi_engine per token; sequence modes use the sequence's ratio, the
    product of its tokens' ratios, for all its tokens. truncate: min(ratio, cap); mask: ratio, or 0 above the cap.

    >>> engine_is_weight(torch.tensor([[0.5, 4.0]]), torch.ones(1, 2), 3.0, "token_mask")[0]
    tensor([[0.5000, 0.0000]])
    >>> engine_is_weight(torch.tensor([[0.5, 4.0]]), torch.ones(1, 2), 3.0, "sequence_truncate")[0]
    tensor([[2., 2.]])
    """
    ratio = to_engine
    if mode.startswith("sequence"):
        log_product = (to_engine.clamp(min=1e-30).log() * mask).sum(dim=1, keepdim=True)  # [M, 1]
        ratio = log_product.exp().expand_as(to_engine)
    over = ratio > cap
    if mode.endswith("truncate"):
        return ratio.clamp(max=cap), over
    return torch.where(over, torch.zeros_like(ratio), ratio), over


@dataclass(frozen=True)
class StepNormaliser:
    """Counts over the whole optimizer step that every aggregation divides by."""

    sequences_rank: int  # completions on this rank in the step
    micro_batches: int  # micro-batches on this rank in the step
    tokens_global: float  # loss tokens in the step, summed over all ranks (dapo)
    max_completion_length: int  # C_max (dr_grpo)


def aggregate(per_token: Tensor, mask: Tensor, loss_type: str, norm: StepNormaliser) -> Tensor:
    """This micro-batch's share of the step loss. per_token, mask [M, C] -> scalar.

    Summing the result over the step's micro-batches gives the rank's step loss (for `dapo`: its share of the
    global step loss, which sums over ranks instead of averaging).
    """
    masked = per_token * mask
    if loss_type == "grpo":
        return (masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).sum() / norm.sequences_rank
    if loss_type == "bnpo":
        return masked.sum() / mask.sum().clamp(min=1) / norm.micro_batches
    if loss_type == "dr_grpo":
        return masked.sum() / (norm.sequences_rank * norm.max_completion_length)
    if loss_type == "dapo":
        return masked.sum() / max(norm.tokens_global, 1.0)
    raise ValueError(f"unknown loss type '{loss_type}'")


def backward_scale(loss_type: str, world_size: int) -> float:
    """Factor on the loss before backward so that rank-averaged gradients equal the step loss's gradient."""
    return float(world_size) if loss_type == "dapo" else 1.0


@dataclass
class LossTerms:
    """The micro-batch loss and the sums behind its metrics (sums, so they add up over micro-batches and ranks)."""

    loss: Tensor  # scalar with grad: this micro-batch's share of the step loss
    tokens: Tensor  # loss tokens in the micro-batch
    clipped_low: Tensor  # tokens where the low clip is active
    clipped_high: Tensor
    kl_sum: Tensor  # sum of per-token KL over loss tokens (0 without a reference)
    entropy_sum: Tensor  # sum of per-token entropy over loss tokens
    ratio_sum: Tensor
    # Against the rollout engine's log-probs (all 0 when the engine gives none), over loss tokens:
    engine_tokens: Tensor  # tokens compared
    engine_abs_diff_sum: Tensor  # sum of |log pi_trainer - log pi_engine| at sampling time
    engine_ratio_sum: Tensor  # sum of pi_trainer / pi_engine
    engine_ratio_capped: Tensor  # tokens whose ratio exceeds tis_cap
    engine_ratio_max: Tensor  # the largest ratio (a max, not a sum, over micro-batches and ranks)
    # The optimizer step's (pre-clip) gradient norm: set by the update (algo/update.py) on the sums it returns,
    # None on one micro-batch's terms.
    grad_norm: Tensor | None = None

    def plus(self, other: LossTerms | None) -> LossTerms:
        """These terms added to `other`'s (maxima stay maxima; None: nothing yet), detached: the update's statistics
        summed over micro-batches, for metrics."""
        both = {}
        for f in fields(self):
            if f.name == "grad_norm":
                continue
            mine = getattr(self, f.name).detach()
            if other is not None:
                theirs = getattr(other, f.name).detach()
                mine = torch.maximum(mine, theirs) if f.name.endswith("_max") else mine + theirs
            both[f.name] = mine
        return LossTerms(**both)


def engine_ratio(old_logprobs: Tensor, sampling_logprobs: Tensor) -> Tensor:
    """pi_trainer / pi_engine of each sampled token at sampling time: exp(old - sampling). [M, C] -> [M, C].

    The engine (vLLM) sampled with its own kernels and precision; the trainer's probability of the same token differs
    a little. Truncated importance sampling weights each token's policy-gradient term by min(ratio, cap).

    >>> engine_ratio(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])).log()
    tensor([[ 0.5000, -1.0000]])
    """
    return torch.exp(old_logprobs - sampling_logprobs)


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor | None,
    ref_logprobs: Tensor | None,
    entropy: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    cfg: AlgorithmConfig,
    norm: StepNormaliser,
    sampling_logprobs: Tensor | None = None,
) -> LossTerms:
    """GRPO-family loss of one micro-batch. logprobs/old/ref/entropy/mask/sampling_logprobs [M, C], advantages [M].

    With `old_logprobs=None` (one pass per batch) the old policy is the current one detached: the ratio is 1.
    With the engine's `sampling_logprobs` and `cfg.tis_cap`, the policy-gradient term (not the KL or entropy terms)
    is weighted by the truncated engine ratio min(pi_old / pi_engine, tis_cap), detached.
    """
    old = logprobs.detach() if old_logprobs is None else old_logprobs
    ratio = importance_ratio(logprobs, old, mask, cfg.importance_sampling)
    if cfg.policy_loss == "cispo":
        per_token, clipped_high = cispo_surrogate(ratio, logprobs, advantages, cfg.clip_eps_high)
        clipped_low = torch.zeros_like(clipped_high)
    elif cfg.policy_loss == "sapo":
        per_token = sapo_surrogate(ratio, advantages, cfg.sapo_temperature_pos, cfg.sapo_temperature_neg)
        clipped_low = clipped_high = torch.zeros_like(per_token, dtype=torch.bool)
    else:
        per_token, clipped_low, clipped_high = clipped_surrogate(
            ratio, advantages, cfg.clip_eps_low, cfg.clip_eps_high, cfg.dual_clip
        )
    to_engine = None if sampling_logprobs is None else engine_ratio(old.detach(), sampling_logprobs)
    capped = None
    if to_engine is not None and cfg.tis_cap is not None:
        weight, capped = engine_is_weight(to_engine, mask, cfg.tis_cap, cfg.engine_is_mode)
        per_token = per_token * weight
    kl = torch.zeros_like(per_token)
    if ref_logprobs is not None:
        kl = kl_penalty(logprobs, ref_logprobs, cfg.kl_estimator)
        per_token = per_token + cfg.kl_coef * kl
    if cfg.entropy_coef != 0:
        if entropy is None:
            raise ValueError("entropy_coef != 0 needs the entropy of the policy")
        per_token = per_token - cfg.entropy_coef * entropy
    with torch.no_grad():
        ent = entropy.detach() if entropy is not None else torch.zeros_like(per_token)
        stats = dict(
            tokens=mask.sum(),
            clipped_low=(clipped_low * mask).sum(),
            clipped_high=(clipped_high * mask).sum(),
            kl_sum=(kl.detach() * mask).sum(),
            entropy_sum=(ent * mask).sum(),
            ratio_sum=(ratio.detach() * mask).sum(),
            **engine_stats(old.detach(), sampling_logprobs, to_engine, mask, capped),
        )
    return LossTerms(loss=aggregate(per_token, mask, cfg.loss_type, norm), **stats)


def engine_stats(
    old: Tensor, sampling: Tensor | None, to_engine: Tensor | None, mask: Tensor, capped: Tensor | None
) -> dict[str, Tensor]:
    """The engine/trainer mismatch over the loss tokens (zeros without engine log-probs)."""
    if sampling is None or to_engine is None:
        zero = torch.zeros((), device=mask.device)
        return dict(
            engine_tokens=zero, engine_abs_diff_sum=zero, engine_ratio_sum=zero, engine_ratio_capped=zero,
            engine_ratio_max=zero,
        )  # fmt: skip
    on = mask > 0
    return dict(
        engine_tokens=on.sum().float(),
        engine_abs_diff_sum=((old - sampling).abs() * mask).sum(),
        engine_ratio_sum=(to_engine * mask).sum(),
        engine_ratio_capped=(capped & on).sum().float() if capped is not None else torch.zeros(()),
        engine_ratio_max=to_engine[on].max() if on.any() else torch.zeros(()),
    )


def nll_loss(logprobs: Tensor, mask: Tensor, tokens_global: float) -> Tensor:
    """Fine-tuning (SFT, RFT): this micro-batch's share of the step's mean negative log-likelihood over the
    completion tokens of the whole step on every rank. logprobs, mask [M, C] -> scalar. Like `dapo`, the shares sum
    over micro-batches and ranks to the step loss (scale the backward by `backward_scale("dapo", world)`).

    >>> nll_loss(torch.tensor([[-1.0, -3.0], [-2.0, 0.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]]), 3.0)
    tensor(2.)
    """
    return -(logprobs * mask).sum() / max(tokens_global, 1.0)
