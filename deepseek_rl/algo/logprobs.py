"""Per-token log-probabilities of completions under a causal LM, in fp32, without full-vocabulary temporaries.

The model computes logits only at the C positions that predict completion tokens (`logits_to_keep` as a tensor of
positions, so nothing is sliced afterwards). `TokenLogprobs` then turns logits [N, V] into log softmax(x / T) at
the sampled tokens, a block of rows at a time in fp32: `logit[token] / T - logsumexp(x / T)`, and the entropy as a
metric from the same pass. Its backward writes the gradient, (onehot - softmax) * g / T, into the logits' own
buffer in place. So no fp32 log-softmax, softmax or gradient of the whole [N, V] batch is ever allocated: with a
151k vocabulary those would be gigabytes per micro-batch. Logits are divided by the sampling temperature, so the
log-probs are those of the distribution that was sampled.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

BLOCK_ROWS = 16  # rows of logits per block: the only temporaries are [BLOCK_ROWS, V]


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding: [B, T] mask -> [B, T] long (padding positions get 0)."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


def _blocks(n: int):
    return ((start, min(start + BLOCK_ROWS, n)) for start in range(0, n, BLOCK_ROWS))


class TokenLogprobs(torch.autograd.Function):
    """logits [N, V], targets [N] -> (log-prob of each target [N] fp32, entropy [N] fp32 or None, no grad)."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, temperature: float, with_entropy: bool):
        n = logits.shape[0]
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        entropy = torch.empty_like(lse) if with_entropy else None
        for start, stop in _blocks(n):
            x = logits[start:stop].float()  # [b, V] (a view when the logits are fp32)
            if temperature != 1.0:
                x = x / temperature
            top = x.max(dim=-1, keepdim=True).values
            p = (x - top).exp_()  # unnormalised softmax
            z = p.sum(dim=-1)
            lse[start:stop] = top.squeeze(-1) + z.log()
            if entropy is not None:  # H = lse - sum(softmax * x)
                entropy[start:stop] = lse[start:stop] - p.mul_(x).sum(dim=-1) / z
        logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).float() / temperature - lse
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature = temperature
        if entropy is not None:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp: Tensor, grad_entropy: Tensor | None):
        logits, targets, lse = ctx.saved_tensors
        g = grad_logp.float() / ctx.temperature  # d logp / d x = (onehot - softmax(x / T)) / T
        for start, stop in _blocks(logits.shape[0]):
            x = logits[start:stop]
            if x.dtype == torch.float32 and ctx.temperature == 1.0:  # the gradient replaces the logits, in place
                x.sub_(lse[start:stop, None]).exp_().mul_(-g[start:stop, None])
            else:
                softmax = (x.float() / ctx.temperature - lse[start:stop, None]).exp_()
                x.copy_(softmax.mul_(-g[start:stop, None]))
        logits.scatter_add_(-1, targets.unsqueeze(-1), g.unsqueeze(-1).to(logits.dtype))
        return logits, None, None, None


def completion_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_length: int,
    temperature: float = 1.0,
    chunk_rows: int = 4,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    packed: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """input_ids, attention_mask [M, P + C] -> (log-probs [M, C], entropy [M, C] or None), fp32.

    The entropy is a metric without grad, unless `entropy_grad` (for the entropy bonus): then it is computed with a
    log-softmax over chunks of `chunk_rows` rows, the slower path that keeps gradients through it. With `packed`
    the M sequences run as one row without padding (`packed_logprobs`); padding positions then hold 0.
    """
    if packed:
        return packed_logprobs(model, input_ids, attention_mask, completion_length, temperature, chunk_rows,
                               with_entropy, entropy_grad)  # fmt: skip
    c = completion_length
    p = input_ids.shape[1] - c
    keep = torch.arange(p - 1, p + c - 1, device=input_ids.device)  # position t predicts completion token t
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=keep,
        use_cache=False,
    ).logits  # [M, C, V]
    targets = input_ids[:, p:]  # [M, C]
    if with_entropy and entropy_grad and torch.is_grad_enabled():
        return _logprobs_with_entropy_grad(logits, targets, temperature, chunk_rows)
    logp, entropy = TokenLogprobs.apply(logits.flatten(0, 1), targets.flatten(), temperature, with_entropy)
    return logp.view_as(targets), None if entropy is None else entropy.view_as(targets)


def packed_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_length: int,
    temperature: float,
    chunk_rows: int,
    with_entropy: bool,
    entropy_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """Padding-free: the real tokens of the M sequences (left-padded prompt + right-padded completion) concatenated
    into one row of T tokens, position ids restarting at 0 for each sequence. Without an attention mask, transformers
    reads the sequence boundaries from the position ids: varlen flash-attention where it is installed, else a
    block-diagonal causal mask (SDPA, eager). Logits are computed only at the K positions that predict a real
    completion token, and the K log-probs are scattered back to [M, C] (0 on padding). No FLOP is spent on padding.
    """
    c = completion_length
    p = input_ids.shape[1] - c
    real = attention_mask.bool()  # [M, P + C]
    flat_ids = input_ids[real]  # [T]
    positions = position_ids_from_mask(attention_mask)[real]  # [T]
    packed_index = (real.flatten().cumsum(0) - 1).view_as(real)  # [M, P + C]: each real token's place in the row
    completion = real[:, p:]  # [M, C]: the real completion tokens
    keep = packed_index[:, p - 1 : p + c - 1][completion]  # [K]: the positions that predict them
    targets = input_ids[:, p:][completion]  # [K]
    logits = model(
        input_ids=flat_ids.unsqueeze(0),
        position_ids=positions.unsqueeze(0),
        logits_to_keep=keep,
        use_cache=False,
    ).logits[0]  # [K, V]
    if with_entropy and entropy_grad and torch.is_grad_enabled():
        logp, entropy = _logprobs_with_entropy_grad(
            logits.unsqueeze(1), targets.unsqueeze(1), temperature, chunk_rows * max(c, 1)
        )
        logp, entropy = logp.squeeze(1), entropy.squeeze(1)
    else:
        logp, entropy = TokenLogprobs.apply(logits, targets, temperature, with_entropy)

    def unpack(values: Tensor) -> Tensor:  # [K] -> [M, C], zeros on padding
        zeros = torch.zeros(completion.shape, dtype=values.dtype, device=values.device)
        return zeros.masked_scatter(completion, values)

    return unpack(logp), None if entropy is None else unpack(entropy)


def _logprobs_with_entropy_grad(logits: Tensor, targets: Tensor, temperature: float, chunk_rows: int):
    logps, entropies = [], []
    for chunk, target in zip(logits.split(chunk_rows), targets.split(chunk_rows), strict=True):
        log_softmax = torch.log_softmax(chunk.float() / temperature, dim=-1)
        logps.append(log_softmax.gather(-1, target.unsqueeze(-1)).squeeze(-1))
        entropies.append(-(log_softmax.exp() * log_softmax).sum(dim=-1))
    return torch.cat(logps), torch.cat(entropies)
