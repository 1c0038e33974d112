"""The static-KV-cache decoder against the model's plain forward, and against the generic cached path."""

import pytest
import torch

from deepseek_rl.config import ModelConfig, RolloutConfig
from deepseek_rl.models.char_tokenizer import build_char_tokenizer
from deepseek_rl.models.loading import load_model
from deepseek_rl.rollout.graphed_decode import GraphedDecoder
from deepseek_rl.rollout.kv_decode import DynamicDecoder, StaticDecoder, supports_static_decode
from deepseek_rl.rollout.sampler import RowUniforms, StopStrings, make_decoder, sample_completions


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_static_decoder_logits_equal_the_plain_forward(arch):
    model = load_model(ModelConfig(arch=arch, num_kv_heads=2), build_char_tokenizer(), seed=3).eval()
    assert supports_static_decode(model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 100, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    decoder, group = StaticDecoder(model), 3
    logits = [decoder.prefill(ids, mask, group, 5)]
    tokens = []
    for _ in range(4):
        tokens.append(logits[-1].argmax(-1))
        logits.append(decoder.step(tokens[-1]))
    full_ids = torch.cat([ids.repeat_interleave(group, 0), torch.stack(tokens, 1)], 1)
    full_mask = torch.cat([mask.repeat_interleave(group, 0), torch.ones(2 * group, 4, dtype=mask.dtype)], 1)
    with torch.no_grad():
        ref = model(
            input_ids=full_ids, attention_mask=full_mask, position_ids=(full_mask.cumsum(1) - 1).clamp(min=0)
        ).logits
    for t, got in enumerate(logits):
        assert torch.allclose(got, ref[:, 8 + t], atol=1e-5), t
    # rows dropped from the cache (as the sampler does when they end): the rows kept decode as before
    kept = torch.tensor([1, 2, 4])
    decoder.keep(kept)
    token = logits[-1][kept].argmax(-1)
    after = decoder.step(token)
    full_ids = torch.cat([full_ids[kept], token[:, None]], 1)
    full_mask = torch.cat([full_mask[kept], torch.ones(3, 1, dtype=mask.dtype)], 1)
    with torch.no_grad():
        ref = model(
            input_ids=full_ids, attention_mask=full_mask, position_ids=(full_mask.cumsum(1) - 1).clamp(min=0)
        ).logits
    assert after.shape[0] == 3 and torch.allclose(after, ref[:, -1], atol=1e-5)


def test_static_and_generic_paths_sample_the_same_completions(monkeypatch):
    tok = build_char_tokenizer()
    model = load_model(ModelConfig(), tok, seed=1).eval()
    prompts = tok(["Q:1+2=", "Q:12+345="], padding=True, add_special_tokens=False, return_tensors="pt")
    cfg = RolloutConfig(max_completion_length=20)

    def sample():
        return sample_completions(
            model, prompts["input_ids"], prompts["attention_mask"], 4, cfg, [tok.eos_token_id], tok.pad_token_id,
            StopStrings(tok, []), RowUniforms(7, 8, 0, 8),
        )  # fmt: skip

    static = sample()
    monkeypatch.setattr("deepseek_rl.rollout.sampler.make_decoder", lambda model, cuda_graphs: DynamicDecoder(model))
    generic = sample()
    for a, b in zip(static[:3], generic[:3], strict=True):
        assert torch.equal(a, b)
    assert static[0].shape[0] == 8


def plain_logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_the_fixed_shape_step_a_cuda_graph_replays_equals_the_plain_forward(arch):
    """GraphedDecoder's step, run eagerly (capture=False, as on CPU): the whole cache under a mask, the position in a
    device tensor. Each step's logits equal the plain forward's, across a drop of rows too; the 2 KV heads of 4
    query heads take the decode step's grouped attention (query heads folded over their KV head)."""
    if arch == "qwen3":  # not a tiny arch of ModelConfig: its per-head q/k norms, from a transformers config
        from transformers import Qwen3Config, Qwen3ForCausalLM

        torch.manual_seed(5)
        config = Qwen3Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=16)  # fmt: skip
        model = Qwen3ForCausalLM(config).eval()
    else:
        model = load_model(ModelConfig(arch=arch, num_kv_heads=2), build_char_tokenizer(), seed=5).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 100, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    decoder, group, new = GraphedDecoder(model, capture=False), 2, 6
    logits = [decoder.prefill(ids, mask, group, new)]
    assert decoder.cache.keys.shape[3] == 7 + new  # the whole cache is read at every step
    tokens = []
    for t in range(3):
        tokens.append(logits[-1].argmax(-1))
        logits.append(decoder.step(tokens[-1]).clone())
        assert decoder.cache.start == 7 + t + 1 and decoder.write_at.item() == 7 + t + 1
    full_ids = torch.cat([ids.repeat_interleave(group, 0), torch.stack(tokens, 1)], 1)
    full_mask = torch.cat([mask.repeat_interleave(group, 0), torch.ones(4, 3, dtype=mask.dtype)], 1)
    ref = plain_logits(model, full_ids, full_mask)
    for t, got in enumerate(logits):
        assert torch.allclose(got, ref[:, 6 + t], atol=1e-5), t
    kept = torch.tensor([0, 3])  # rows of both prompts, the left-padded one included
    decoder.keep(kept)
    for _ in range(2):
        token = logits[-1][kept].argmax(-1) if len(logits) == 4 else logits[-1].argmax(-1)
        logits.append(decoder.step(token).clone())
        full_ids = torch.cat([full_ids[kept] if full_ids.shape[0] == 4 else full_ids, token[:, None]], 1)
        full_mask = torch.cat([full_mask[kept] if full_mask.shape[0] == 4 else full_mask, torch.ones(2, 1).long()], 1)
        assert torch.allclose(logits[-1], plain_logits(model, full_ids, full_mask)[:, -1], atol=1e-5)


def test_sampling_through_the_fixed_shape_step_draws_the_tokens_of_the_eager_decoder(monkeypatch):
    """The sampler with the graphed decoder's step (eagerly): the same completions as the static decoder's, with
    rows ending on EOS and dropped at half (the graphed rule) rather than an eighth."""
    tok = build_char_tokenizer()
    model = load_model(ModelConfig(), tok, seed=2).eval()
    prompts = tok(["Q:7+8=", "Q:100+23=", "Q:5+5="], padding=True, add_special_tokens=False, return_tensors="pt")
    cfg = RolloutConfig(max_completion_length=48, temperature=1.5)
    drops = []

    def sample():
        return sample_completions(
            model, prompts["input_ids"], prompts["attention_mask"], 4, cfg, [tok.eos_token_id], tok.pad_token_id,
            StopStrings(tok, ["+"]), RowUniforms(11, 12, 0, 12),
        )  # fmt: skip

    eager = sample()

    class Counted(GraphedDecoder):
        def keep(self, rows):
            drops.append(int(rows.numel()))
            super().keep(rows)

    monkeypatch.setattr("deepseek_rl.rollout.sampler.make_decoder", lambda m, cuda_graphs: Counted(m, capture=False))
    graphed = sample()
    for a, b in zip(eager[:3], graphed[:3], strict=True):
        assert torch.equal(a, b)
    ended = int((~graphed[2]).sum())
    assert 6 <= ended < 12 and drops, (ended, drops)  # rows ended early and were dropped, some ran to the limit
    assert drops[0] <= 6  # the first drop came once half of the 12 rows had ended


def test_a_failed_capture_warns_once_and_decodes_eagerly(monkeypatch):
    """Where capture fails (here: a CPU, stand-ins for the stream calls and a graph that refuses to capture), the
    warm-up's writes and position counters are set back, the decoder says so and runs the fixed-shape step."""
    model = load_model(ModelConfig(arch="qwen2", num_kv_heads=2), build_char_tokenizer(), seed=5).eval()

    class Stream:
        def wait_stream(self, other):
            pass

    def refuse(graph, stream=None):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: torch.autograd.profiler.record_function("side"))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: None)
    monkeypatch.setattr(torch.cuda, "graph", refuse)
    ids = torch.randint(4, 100, (1, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    graphed, eager = GraphedDecoder(model), StaticDecoder(model)
    first = graphed.prefill(ids, mask, 2, 4)
    eager.prefill(ids, mask, 2, 4)
    token = first.argmax(-1)
    with pytest.warns(UserWarning, match="could not be captured in a CUDA graph"):
        got = graphed.step(token).clone()
    assert not graphed.capture and graphed.write_at.item() == 6  # one step's advance, not the warm-up's too
    assert torch.allclose(got, eager.step(token), atol=1e-5)
    token = got.argmax(-1)
    assert torch.allclose(graphed.step(token), eager.step(token), atol=1e-5)  # no second warning, no capture


def test_the_static_decoder_on_cpu_whatever_cuda_graphs_says():
    model = load_model(ModelConfig(), build_char_tokenizer(), seed=1)
    assert type(make_decoder(model, cuda_graphs=True)) is StaticDecoder
    assert type(make_decoder(model)) is StaticDecoder
