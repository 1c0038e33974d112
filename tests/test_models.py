"""Tokenizers and the tiny model factory round-trip through Hugging Face formats."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from deepseek_rl.config import ModelConfig
from deepseek_rl.models.char_tokenizer import build_char_tokenizer
from deepseek_rl.models.loading import eos_token_ids, load_model, load_tokenizer


def test_char_tokenizer_round_trip(tmp_path):
    tok = build_char_tokenizer()
    text = "Q:12+34=<think>2+4+0=06\n1+3+0=04</think><answer>46</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) == len("Q:12+34=") + 1 + len("2+4+0=06\n1+3+0=04") + 1 + 1 + 2 + 1  # tags are single tokens
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text, add_special_tokens=False)["input_ids"] == ids
    assert loaded.decode(ids + [loaded.eos_token_id], skip_special_tokens=True) == text


def test_tiny_model_save_and_reload(tmp_path):
    torch.manual_seed(0)
    tok = build_char_tokenizer()
    model = load_model(ModelConfig(arch="qwen2", num_kv_heads=2), tok)
    assert model.config.vocab_size == len(tok) and model.config.model_type == "qwen2"
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert eos_token_ids(tok, model) == [tok.eos_token_id]


def test_real_r1_tokenizer_loads(shared):
    cfg = ModelConfig(
        tokenizer=str(shared / "tokenizers" / "deepseek-r1-distill-qwen-1.5b"), arch="qwen2", num_kv_heads=2
    )
    tok = load_tokenizer(cfg)
    assert len(tok) == 151665 and tok.pad_token_id == 151643 and tok.padding_side == "left"


def test_gradient_checkpointing_gives_the_same_gradients():
    """model.gradient_checkpointing on the transformers release installed (5.16-5.19 name it
    gradient_checkpointing_enable, 5.20+ activation_checkpointing_enable: the GPU check found the first missing)."""
    tok = build_char_tokenizer()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    grads = []
    for checkpointing in (False, True):
        model = load_model(ModelConfig(gradient_checkpointing=checkpointing), tok, seed=3, trainable=True)
        model.train()
        model(input_ids=ids, use_cache=False).logits.square().mean().backward()
        grads.append(model.model.layers[0].mlp.up_proj.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])
