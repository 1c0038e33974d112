"""The sampler: filtering, inverse-CDF sampling, EOS / stop strings / truncation, and KV-cache consistency."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import LlamaConfig

from deepseek_rl.algo.logprobs import completion_logprobs, position_ids_from_mask
from deepseek_rl.config import ModelConfig, RolloutConfig
from deepseek_rl.models.char_tokenizer import build_char_tokenizer
from deepseek_rl.models.loading import load_model
from deepseek_rl.rollout.sampler import RowUniforms, StopStrings, filter_logits, sample_completions, sample_tokens


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True]]
    # top-p 0.5: the first token already holds 0.5 of the mass, so only it stays
    assert torch.isinf(filter_logits(logits, top_p=0.5)).tolist() == [[False, True, True]]
    # top-p 0.6: tokens 1 and 2 are needed (0.5 < 0.6), token 3 is not (0.8 >= 0.6)
    assert torch.isinf(filter_logits(logits, top_p=0.6)).tolist() == [[False, False, True]]


def test_top_p_by_partial_sort_keeps_what_a_full_sort_keeps(monkeypatch):
    """The nucleus looked for among the top candidates, with rows whose nucleus is larger sorted whole: the kept
    tokens are those of the full sort's rule, for peaked rows, flat rows, with top-k, and with fewer tokens than
    candidates."""
    import deepseek_rl.rollout.sampler as sampler

    def by_full_sort(logits, top_p):
        ranked, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(ranked, dim=-1)
        drop = torch.zeros_like(ranked, dtype=torch.bool).scatter(-1, order, (probs.cumsum(-1) - probs) >= top_p)
        return ~drop

    monkeypatch.setattr(sampler, "NUCLEUS_CANDIDATES", 16)
    g = torch.Generator().manual_seed(0)
    peaked = torch.randn(3, 500, generator=g) * 4  # nucleus of a few tokens
    flat = torch.randn(3, 500, generator=g) * 0.1  # nucleus of hundreds: past the 16 candidates
    logits = torch.cat([peaked, flat])
    for top_p in (0.3, 0.9, 0.95):
        kept = ~torch.isinf(filter_logits(logits, top_p=top_p))
        assert torch.equal(kept, by_full_sort(logits, top_p)), top_p
        assert (kept[:3].sum(-1) < 16).all() and (kept[3:].sum(-1) > 16).all()
    topk = filter_logits(logits, top_k=40, top_p=0.9)  # top-k first, then the nucleus of what is left
    assert torch.equal(~torch.isinf(topk), by_full_sort(filter_logits(logits, top_k=40), 0.9))
    assert (~torch.isinf(topk)).sum(-1).max() <= 40
    small = logits[:, :10]  # fewer tokens than candidates
    assert torch.equal(~torch.isinf(filter_logits(small, top_p=0.9)), by_full_sort(small, 0.9))


def test_inverse_cdf_sampling_hand_computed():
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5]])).expand(4, 3)
    # CDF 0.2, 0.5, 1.0: u in [0, 0.2) -> 0, [0.2, 0.5) -> 1, [0.5, 1) -> 2
    tokens = sample_tokens(logits, RolloutConfig(), torch.tensor([0.1, 0.2, 0.49, 0.9]))
    assert tokens.tolist() == [0, 1, 1, 2]


def test_sampling_frequencies_match_probabilities():
    probs = torch.tensor([0.1, 0.6, 0.3])
    n = 20000
    tokens = sample_tokens(
        torch.log(probs).expand(n, 3), RolloutConfig(), torch.rand(n, generator=torch.Generator().manual_seed(0))
    )
    freq = torch.bincount(tokens, minlength=3).float() / n
    assert torch.allclose(freq, probs, atol=0.015)


def test_row_uniforms_do_not_depend_on_the_rank_split():
    whole = RowUniforms(7, total_rows=8, start=0, n=8)
    halves = [RowUniforms(7, 8, 0, 4), RowUniforms(7, 8, 4, 4)]
    for _ in range(3):
        assert torch.equal(whole.next(), torch.cat([h.next() for h in halves]))


class ScriptedLM(nn.Module):
    """A stand-in causal LM that emits a fixed token script per row; counts forward calls. At prefill it stores
    each row's index in the Hugging Face cache it is given, so the rows the sampler keeps (the cache's own
    `batch_select_indices`) are the rows it answers for."""

    def __init__(self, scripts: list[list[int]], vocab: int, prompt_length: int):
        super().__init__()
        self.config = LlamaConfig(vocab_size=vocab, hidden_size=8, num_hidden_layers=1, num_attention_heads=1)
        self.scripts, self.vocab, self.prompt_length = scripts, vocab, prompt_length
        self.weight = nn.Parameter(torch.zeros(1))
        self.calls = 0
        self.rows_seen: list[list[int]] = []  # the rows of each forward call

    def forward(self, input_ids, attention_mask, **kwargs):
        self.calls += 1
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if self.calls == 1:
            index = torch.arange(input_ids.shape[0], dtype=torch.float).view(-1, 1, 1, 1)
            cache.update(index, index, 0)
        rows = cache.layers[0].keys[:, 0, 0, 0].long().tolist()
        self.rows_seen.append(rows)
        step = attention_mask.shape[1] - self.prompt_length  # tokens generated so far
        logits = torch.full((len(rows), 1, self.vocab), -1e9)
        for i, row in enumerate(rows):
            script = self.scripts[row]
            logits[i, 0, script[min(step, len(script) - 1)]] = 0.0
        return SimpleNamespace(logits=logits)


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_eos_stop_strings_truncation_and_early_exit():
    tok = build_char_tokenizer()
    eos, pad = tok.eos_token_id, tok.pad_token_id
    scripts = [
        _ids(tok, "12") + [eos],  # ends with EOS after 2 tokens
        _ids(tok, "ab</answer>xyz"),  # stop string </answer> (a single tag token here)
        _ids(tok, "zzzzzzzzzz"),  # never ends: truncated at max_completion_length
    ]
    prompt = torch.tensor([_ids(tok, "Q:") for _ in scripts])
    model = ScriptedLM(scripts, len(tok), prompt.shape[1])
    cfg = RolloutConfig(max_completion_length=6, stop_strings=["</answer>"])
    ids, mask, truncated, _ = sample_completions(
        model,
        prompt,
        torch.ones_like(prompt),
        1,
        cfg,
        [eos],
        pad,
        StopStrings(tok, cfg.stop_strings),
        RowUniforms(0, 3, 0, 3),
    )
    assert ids.shape == (3, 6)
    assert mask.tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1] * 6]
    assert ids[0, :3].tolist() == scripts[0] and ids[0, 3:].tolist() == [pad] * 3
    assert tok.decode(ids[1][mask[1].bool()]) == "ab</answer>"
    assert truncated.tolist() == [False, False, True]
    # prefill and two steps on all rows; once rows 0 and 1 have ended, the decoder runs row 2 alone
    assert model.rows_seen == [[0, 1, 2]] * 3 + [[2]] * 3


def test_loop_stops_as_soon_as_every_row_ended():
    tok = build_char_tokenizer()
    eos = tok.eos_token_id
    scripts = [[eos], _ids(tok, "1") + [eos]]
    prompt = torch.tensor([_ids(tok, "Q:")] * 2)
    model = ScriptedLM(scripts, len(tok), prompt.shape[1])
    cfg = RolloutConfig(max_completion_length=50)
    ids, mask, truncated, _ = sample_completions(
        model,
        prompt,
        torch.ones_like(prompt),
        1,
        cfg,
        [eos],
        tok.pad_token_id,
        StopStrings(tok, []),
        RowUniforms(0, 2, 0, 2),
    )
    assert ids.shape[1] == 2 and model.calls == 2  # prefill + one decode step, not 50
    assert not truncated.any()


def test_stop_string_spanning_tokens():
    tok = build_char_tokenizer()
    stop = StopStrings(tok, ["END"])
    tokens = torch.tensor([_ids(tok, "xxEN"), _ids(tok, "xEND")])
    assert stop(tokens, torch.tensor([True, True])).tolist() == [False, True]
    assert stop(tokens, torch.tensor([True, False])).tolist() == [False, False]  # only rows asked for


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_cached_sampling_matches_training_logprobs_with_left_padding(arch):
    """Sampling (KV cache, left padding) and training (one forward) must see the same distribution."""
    torch.manual_seed(0)
    tok = build_char_tokenizer()
    model = load_model(ModelConfig(arch=arch, num_kv_heads=2), tok).eval()
    texts = ["Q:1+2=", "Q:12+345="]
    enc = tok(texts, padding=True, add_special_tokens=False, return_tensors="pt")
    assert enc["attention_mask"][0, 0] == 0  # the short prompt is left-padded
    cfg = RolloutConfig(max_completion_length=12, temperature=0.7)
    ids, mask, _, _ = sample_completions(
        model,
        enc["input_ids"],
        enc["attention_mask"],
        1,
        cfg,
        [tok.eos_token_id],
        tok.pad_token_id,
        StopStrings(tok, []),
        RowUniforms(1, 2, 0, 2),
    )
    full_ids = torch.cat([enc["input_ids"], ids], 1)
    full_mask = torch.cat([enc["attention_mask"], mask], 1)
    with torch.no_grad():
        logp, entropy = completion_logprobs(
            model, full_ids, full_mask, ids.shape[1], temperature=0.7, chunk_rows=1, with_entropy=True
        )
        # reference: each row alone, unpadded, no cache, full log-softmax
        for row in range(2):
            keep = full_mask[row].bool()
            seq = full_ids[row][keep][None]
            logits = (
                model(input_ids=seq, position_ids=position_ids_from_mask(torch.ones_like(seq))).logits[0].float() / 0.7
            )
            n = int(mask[row].sum())
            ref = torch.log_softmax(logits[-n - 1 : -1], -1).gather(-1, seq[0, -n:, None]).squeeze(-1)
            assert torch.allclose(logp[row, :n], ref, atol=1e-4)
            ref_entropy = -(torch.softmax(logits[-n - 1 : -1], -1) * torch.log_softmax(logits[-n - 1 : -1], -1)).sum(-1)
            assert torch.allclose(entropy[row, :n], ref_entropy, atol=1e-4)


def test_reward_columns_pass_unpadded_completion_ids():
    from deepseek_rl.batch import RolloutBatch

    batch = RolloutBatch(
        prompt_ids=torch.zeros(2, 1, dtype=torch.long),
        prompt_mask=torch.ones(2, 1, dtype=torch.long),
        completion_ids=torch.tensor([[5, 6, 1, 0], [7, 8, 9, 1]]),
        completion_mask=torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]),
        truncated=torch.tensor([False, False]),
        completions=["a", "b"],
        prompts=["p", "p"],
        columns={"answer": ["1", "1"]},
        group_size=2,
    )
    columns = batch.reward_columns()
    assert columns["completion_ids"] == [[5, 6, 1], [7, 8, 9, 1]]  # as TRL passes them: no padding
    assert columns["answer"] == ["1", "1"] and columns["prompts"] == ["p", "p"]


@pytest.mark.parametrize("temperature,dtype", [(1.0, torch.float32), (1.0, torch.float64), (0.7, torch.float64)])
def test_token_logprobs_match_log_softmax_with_gradients(temperature, dtype):
    from deepseek_rl.algo.logprobs import TokenLogprobs

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 50, generator=g, dtype=dtype)  # 37 rows: several blocks of 16
    targets = torch.randint(0, 50, (37,), generator=g)
    weights = torch.randn(37, generator=g, dtype=dtype)
    ref_logits = logits.clone().requires_grad_()
    log_softmax = torch.log_softmax(ref_logits / temperature, dim=-1)
    ref = log_softmax.gather(-1, targets[:, None]).squeeze(-1)
    ref_entropy = -(log_softmax.exp() * log_softmax).sum(-1)
    (ref * weights).sum().backward()

    ours_logits = logits.clone().requires_grad_()
    x = ours_logits * 1.0  # a non-leaf buffer, as the model's output is
    logp, entropy = TokenLogprobs.apply(x, targets, temperature, True)
    (logp * weights).sum().backward()
    assert torch.allclose(logp.to(dtype), ref, atol=1e-5)
    assert torch.allclose(entropy.to(dtype), ref_entropy, atol=1e-5)
    assert torch.allclose(ours_logits.grad, ref_logits.grad, atol=1e-6)
