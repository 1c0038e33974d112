"""The built-in engine's sampler: G sampled completions per prompt from a batched, KV-cached decode loop.

Each prompt is left-padded and prefilled once; its KV cache is repeated for its G completions (groups contiguous,
so a group never leaves its rank). The loop then feeds one token per row per step through a preallocated KV cache
(kv_decode.py; on a GPU each step is replayed from a CUDA graph, graphed_decode.py); a row ends at an EOS token or a
stop string, and the loop stops as soon as every row has ended. Rows that have ended are dropped from the decoder's
batch once they make up an eighth of it (half with a CUDA graph; each drop copies the KV cache of the rows left), so
with R1's long-tailed lengths the last steps run the few long rows only.

Sampling is by inverse CDF from one uniform number per row and token. The uniforms of a whole step are drawn for
all rows of all ranks from one seeded generator, and each rank reads its own rows: a completion depends only on
(seed, step, its row in the global batch) and the policy, so runs on 1 or N ranks, or a resumed run, sample alike.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from deepseek_rl.batch import PromptBatch, RolloutBatch
from deepseek_rl.config.rollout import RolloutConfig
from deepseek_rl.rollout.graphed_decode import GraphedDecoder
from deepseek_rl.rollout.kv_decode import DynamicDecoder, StaticDecoder, base_model, supports_static_decode

NUCLEUS_CANDIDATES = 1024  # top-p looks for the nucleus among the most likely tokens first (filter_logits)


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Top-k then nucleus (top-p) filtering: logits [N, V] -> [N, V] with dropped tokens at -inf.

    Top-p drops a token when the tokens ranked above it already hold top_p of the mass (the first always stays).
    The nucleus is looked for among the NUCLEUS_CANDIDATES most likely tokens of each row (a partial sort); only a
    row whose nucleus is larger (a flat distribution) sorts its whole vocabulary. Same rule as a full sort, a tenth
    of its cost on a peaked row: 8 rows of 151,936 logits, one CPU core, 10 ms against 100 ms per token (where the
    mass above a token equals top_p to the last bit, any two summation orders may keep it or not)."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p >= 1.0:
        return logits
    vocab = logits.shape[-1]
    keep = torch.zeros_like(logits, dtype=torch.bool)
    ranked, order = torch.topk(logits, min(NUCLEUS_CANDIDATES, vocab), dim=-1)  # [N, K] descending
    top = ranked[:, :1]
    total = (logits - top).exp().sum(dim=-1, keepdim=True)  # [N, 1] the row's mass, relative to its top token
    kept = nucleus(ranked - top, total, top_p)
    keep.scatter_(-1, order, kept)
    # the last candidate still kept: the nucleus may go on past the candidates (none left past a whole vocabulary)
    flat = kept[:, -1] & (vocab > NUCLEUS_CANDIDATES)
    if flat.any():  # these rows' nucleus reaches past the candidates: sort their whole vocabulary
        ranked_all, order_all = torch.sort(logits[flat], dim=-1, descending=True)
        kept_all = nucleus(ranked_all - top[flat], total[flat], top_p)
        keep[flat] = torch.zeros_like(kept_all).scatter_(-1, order_all, kept_all)
    return logits.masked_fill(~keep, float("-inf"))


def nucleus(ranked: Tensor, total: Tensor, top_p: float) -> Tensor:
    """ranked [N, K] logits in descending order less the row's largest, total [N, 1] the sum of exp(logit - largest)
    over the whole row -> [N, K] bool: kept where the tokens ranked above hold less than top_p of the mass."""
    probs = ranked.exp() / total
    return (probs.cumsum(dim=-1) - probs) < top_p


def sample_tokens(logits: Tensor, cfg: RolloutConfig, uniforms: Tensor) -> Tensor:
    """One token per row by inverse CDF: logits [N, V], uniforms [N] in [0, 1) -> [N] long (temperature 0: argmax)."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / cfg.temperature, cfg.top_k, cfg.top_p)
    # unnormalised CDF of exp(logits - max), built in place (one temporary); the threshold scales with its total
    cdf = (logits - logits.max(dim=-1, keepdim=True).values).exp_().cumsum_(dim=-1)  # [N, V]
    token = torch.searchsorted(cdf, (uniforms.to(cdf.device) * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
    return token.clamp(max=cdf.shape[-1] - 1)


def make_decoder(model: nn.Module, cuda_graphs: bool = False) -> StaticDecoder | DynamicDecoder:
    """The static decoder for Llama-family models (its step replayed from a CUDA graph with `cuda_graphs` on a GPU:
    graphed_decode.py), else the generic one."""
    if not supports_static_decode(model):
        return DynamicDecoder(model)
    if cuda_graphs and base_model(model).model.embed_tokens.weight.device.type == "cuda":
        return GraphedDecoder(model)
    return StaticDecoder(model)


class RowUniforms:
    """Per decode step, uniforms for all `total_rows` rows of the global batch; yields rows [start, start + n), or
    the rows listed in `rows` (global indices, e.g. the trajectories still running in a multi-turn rollout)."""

    def __init__(self, seed: int, total_rows: int, start: int, n: int, rows: list[int] | None = None):
        self.generator = torch.Generator().manual_seed(seed)
        self.total_rows = total_rows
        self.rows = torch.tensor(rows, dtype=torch.long) if rows is not None else torch.arange(start, start + n)

    def next(self) -> Tensor:  # [n]
        return torch.rand(self.total_rows, generator=self.generator)[self.rows]


class StopStrings:
    """Detects stop strings in the decoded tail of each row (a stop string may span several tokens)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop_strings: list[str]):
        self.tokenizer = tokenizer
        self.stop_strings = list(stop_strings)
        self.window = max((len(s) for s in self.stop_strings), default=0) + 2

    def __call__(self, tokens: Tensor, rows: Tensor) -> Tensor:
        """tokens [N, t] the last t generated (t <= window), rows [N] bool to check -> [N] bool (row just produced a
        stop string)."""
        if not self.stop_strings:
            return torch.zeros_like(rows)
        # on the host: one copy of the tails per decode step (not a device read and write per row on a GPU)
        tails, check = tokens[:, -self.window :].cpu(), rows.cpu()
        hit = [False] * len(check)
        for i in check.nonzero().flatten().tolist():
            text = self.tokenizer.decode(tails[i])
            hit[i] = any(s in text for s in self.stop_strings)
        return torch.tensor(hit, dtype=torch.bool, device=rows.device)


@torch.no_grad()
def sample_completions(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    group_size: int,
    cfg: RolloutConfig,
    eos_ids: list[int],
    pad_id: int,
    stop: StopStrings,
    uniforms: RowUniforms,
    with_logprobs: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """B prompts [B, P] -> G completions each: completion_ids [B * G, C], completion_mask [B * G, C], truncated
    [B * G], and with `with_logprobs` the sampler's log-prob of each sampled token [B * G, C] (log softmax of the
    logits / temperature, unfiltered: the trainer's definition; 0 on padding), else None."""
    decoder = make_decoder(model, cfg.cuda_graphs)
    logits = decoder.prefill(prompt_ids, prompt_mask, group_size, cfg.max_completion_length)  # [H, V]
    n, device = logits.shape[0], logits.device
    eos = torch.tensor(eos_ids, device=device)
    tokens: list[Tensor] = []
    masks: list[Tensor] = []
    logprobs: list[Tensor] = []
    done = torch.zeros(n, dtype=torch.bool, device=device)
    held = torch.arange(n, device=device)  # [H] the rows the decoder still runs (ascending); logits are theirs
    for _ in range(cfg.max_completion_length):
        drawn = sample_tokens(logits, cfg, uniforms.next().to(device)[held])  # [H]
        token = torch.full((n,), pad_id, dtype=drawn.dtype, device=device).index_copy_(0, held, drawn)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        masks.append((~done).long())
        tokens.append(token)
        if with_logprobs:
            scaled = logits.float() / (cfg.temperature or 1.0)
            chosen = scaled.gather(-1, drawn.unsqueeze(-1)).squeeze(-1) - scaled.logsumexp(dim=-1)
            chosen = torch.zeros(n, dtype=chosen.dtype, device=device).index_copy_(0, held, chosen)
            logprobs.append(torch.where(done, torch.zeros_like(chosen), chosen))
        ended = ~done & torch.isin(token, eos)
        if stop.stop_strings:
            ended |= stop(torch.stack(tokens[-stop.window :], dim=1), ~done & ~ended)  # only the tail is read
        done |= ended
        if bool(done.all()) or len(tokens) == cfg.max_completion_length:
            break
        running = ~done[held]
        if int((~running).sum()) * decoder.drop_when >= held.numel():  # an eighth of the held rows have ended
            # (half with a CUDA graph, which each drop recaptures): drop them
            kept = running.nonzero().squeeze(1)
            decoder.keep(kept)
            held = held[kept]
        logits = decoder.step(token[held])
    sampled = torch.stack(logprobs, dim=1) if with_logprobs else None
    return torch.stack(tokens, dim=1), torch.stack(masks, dim=1), ~done, sampled


def generate_rollouts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: PromptBatch,
    cfg: RolloutConfig,
    group_size: int,
    eos_ids: list[int],
    uniforms: RowUniforms,
    with_logprobs: bool = False,
) -> RolloutBatch:
    """B prompts -> B * G completions with their masks, truncation flags and decoded text (and with `with_logprobs`
    the sampler's log-prob of each sampled token: the behaviour policy of asynchronous rollouts)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    completion_ids, completion_mask, truncated, logprobs = sample_completions(
        model,
        prompts.input_ids.to(device),
        prompts.attention_mask.to(device),
        group_size,
        cfg,
        eos_ids,
        tokenizer.pad_token_id,
        StopStrings(tokenizer, cfg.stop_strings),
        uniforms,
        with_logprobs,
    )
    model.train(was_training)
    texts = tokenizer.batch_decode(
        [ids[mask.bool()] for ids, mask in zip(completion_ids, completion_mask, strict=True)], skip_special_tokens=True
    )
    extras = {"sampling_logprobs": logprobs} if logprobs is not None else {}
    return RolloutBatch.of_prompts(
        prompts, group_size, completion_ids, completion_mask, truncated, texts, device, **extras
    )
