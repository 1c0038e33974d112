"""The static-KV-cache decoder against the model's plain forward, and against the generic cached path."""

import pytest
import torch

from deepseek_rl.config import ModelConfig, RolloutConfig
from deepseek_rl.models.char_tokenizer import build_char_tokenizer
from deepseek_rl.models.loading import load_model
from deepseek_rl.rollout.kv_decode import DynamicDecoder, StaticDecoder, supports_static_decode
from deepseek_rl.rollout.sampler import RowUniforms, StopStrings, sample_completions


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
    monkeypatch.setattr("deepseek_rl.rollout.sampler.make_decoder", DynamicDecoder)
    generic = sample()
    for a, b in zip(static[:3], generic[:3], strict=True):
        assert torch.equal(a, b)
    assert static[0].shape[0] == 8
