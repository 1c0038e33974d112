"""Per-token log-probabilities of completions under a causal LM, in fp32, a few rows at a time.

The model returns logits only for the completion positions (`logits_to_keep`); log-probs are then computed as
`logit[token] - logsumexp(logits)` over chunks of rows, so the fp32 log-softmax of the whole batch never exists.
Logits are divided by the sampling temperature, so the log-probs are those of the distribution that was sampled.
"""

from __future__ import annotations

import torch
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
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=c + 1,
        use_cache=False,
    ).logits[:, :-1]  # [M, C, V]: position t predicts completion token t
    targets = input_ids[:, -c:]  # [M, C]
    logps, entropies = [], []
    for start in range(0, logits.shape[0], chunk_rows):
        chunk = logits[start : start + chunk_rows].float() / temperature  # [m, C, V]
        lse = torch.logsumexp(chunk, dim=-1)  # [m, C]
        logps.append(chunk.gather(-1, targets[start : start + chunk_rows, :, None]).squeeze(-1) - lse)
        if with_entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                entropies.append(lse - (torch.softmax(chunk, dim=-1) * chunk).sum(dim=-1))
    entropy = torch.cat(entropies) if with_entropy else None
    return torch.cat(logps), entropy
