"""LoRA on CPU with a tiny model: only the adapters train, the reference is the base with adapters off, and the
export (merged model + adapters alone) loads and computes what the trained policy computed."""

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from deepseek_rl.config import ConfigError, load_recipe
from deepseek_rl.config.lora import LoraConfig
from deepseek_rl.models.loading import load_model, load_tokenizer
from deepseek_rl.models.lora import AdapterDisabledReference, merged_state_dict

from .conftest import run_cli

LORA = ["model.arch=qwen2", "model.num_kv_heads=2", "model.lora.r=4", "model.lora.alpha=8"]


def tiny_policy(overrides: list[str] = ()):
    cfg = load_recipe("smoke", LORA + list(overrides))
    tokenizer = load_tokenizer(cfg.model)
    return cfg, tokenizer, load_model(cfg.model, tokenizer, seed=cfg.trainer.seed, trainable=True)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_only_adapters_train_and_the_reference_is_the_base():
    cfg, tokenizer, policy = tiny_policy()
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == set(cfg.model.lora.target_modules)
    base = load_model(cfg.model, tokenizer, seed=cfg.trainer.seed)  # the same seeded init, no adapters
    ids = torch.tensor([tokenizer("Q:12+34=", add_special_tokens=False)["input_ids"]])
    assert torch.equal(logits(policy, ids), logits(base, ids))  # B = 0: the adapted model starts as the base
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.5)
    assert not torch.allclose(logits(policy, ids), logits(base, ids))
    assert torch.equal(logits(AdapterDisabledReference(policy), ids), logits(base, ids))
    assert not list(AdapterDisabledReference(policy).parameters())  # the reference owns no copy of the weights


def test_merged_state_dict_equals_peft_merge():
    _, tokenizer, policy = tiny_policy()
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.5)
    ids = torch.tensor([tokenizer("Q:1+2=", add_special_tokens=False)["input_ids"]])
    trained = logits(policy, ids)
    merged = merged_state_dict(policy.state_dict(), scaling=8 / 4)
    reference = policy.merge_and_unload().state_dict()
    assert merged.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(merged[key], value)
    torch.testing.assert_close(logits(policy, ids), trained)  # merge_and_unload kept the function


def test_lora_config_errors():
    with pytest.raises(ConfigError, match="model.lora.r=-1 must be >= 0"):
        LoraConfig(r=-1)
    with pytest.raises(ConfigError, match="model.lora.target_modules"):
        tiny_policy(["model.lora.target_modules=[nonexistent_proj]"])


@pytest.mark.slow
def test_lora_run_trains_adapters_and_exports_merged_and_adapter(tmp_path: Path):
    """The smoke recipe (KL to the reference) with LoRA, through the real CLI."""
    result = run_cli(
        "train", "--config-name", "smoke", *LORA, "logger=none", f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["kl"] == 0.0 and lines[-1]["kl"] > 0  # the reference is the base, the policy moved away
    cfg = load_recipe("smoke", LORA)
    tokenizer = load_tokenizer(cfg.model)
    initial = load_model(cfg.model, tokenizer, seed=cfg.trainer.seed)
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    targets = tuple(f"{m}.weight" for m in cfg.model.lora.target_modules)
    trained = dict(final.named_parameters())
    assert trained.keys() == dict(initial.named_parameters()).keys()
    for name, param in initial.named_parameters():
        changed = not torch.equal(param, trained[name])
        assert changed == name.endswith(targets), name  # only the adapted weights changed (by B A)
    adapted = PeftModel.from_pretrained(initial, tmp_path / "run" / "adapter")
    ids = torch.tensor([tokenizer("Q:12+34=", add_special_tokens=False)["input_ids"]])
    torch.testing.assert_close(logits(adapted, ids), logits(final, ids), rtol=1e-4, atol=1e-5)
