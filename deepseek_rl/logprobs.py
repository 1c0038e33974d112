"""Per-token log-probabilities of completions under a causal LM, in fp32, a few rows at a time.

The model computes logits only at the C positions that predict completion tokens (`logits_to_keep` as a tensor of
positions, so nothing is sliced afterwards). Log-probs come from PyTorch's fused cross-entropy kernel
(`logit[token] - logsumexp(logits)` in one pass, and a cheap backward), applied to chunks of rows taken with
`split` (whose backward writes each chunk's gradient once, where indexing would add a full-size zero tensor per
chunk): the fp32 log-softmax of the whole batch never exists. Logits are divided by the sampling temperature, so
the log-probs are those of the distribution that was sampled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding: [B, T] mask -> [B, T] long (padding positions get 0)."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


def completion_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_length: int,
    temperature: float = 1.0,
    chunk_rows: int = 4,
    with_entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """input_ids, attention_mask [M, P + C] -> (log-probs [M, C], entropy [M, C] or None), fp32.

    The entropy is a metric computed without grad unless `entropy_grad` (the entropy bonus needs it).
    """
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
    logps, entropies = [], []
    for chunk, target in zip(logits.split(chunk_rows), targets.split(chunk_rows), strict=True):
        chunk = chunk.float()
        if temperature != 1.0:
            chunk = chunk / temperature
        if with_entropy and entropy_grad and torch.is_grad_enabled():
            log_softmax = torch.log_softmax(chunk, dim=-1)  # one pass serves both, with grad
            logps.append(log_softmax.gather(-1, target.unsqueeze(-1)).squeeze(-1))
            entropies.append(-(log_softmax.exp() * log_softmax).sum(dim=-1))
            continue
        flat = F.cross_entropy(chunk.flatten(0, 1), target.flatten(), reduction="none")
        logps.append(-flat.view_as(target))
        if with_entropy:
            with torch.no_grad():
                log_softmax = torch.log_softmax(chunk, dim=-1)
                entropies.append(-(log_softmax.exp() * log_softmax).sum(dim=-1))
    entropy = torch.cat(entropies) if with_entropy else None
    return torch.cat(logps), entropy
