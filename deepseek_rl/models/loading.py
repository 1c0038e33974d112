"""Tokenizers and causal LMs: any Hugging Face model from a local directory or a Hub id, or a tiny random one.

The tiny factory builds a Llama or Qwen2 model sized by `ModelConfig`, with its vocabulary taken from the
tokenizer and its own seeded init (the same weights on every backend), so that everything runs offline: with
the character tokenizer for procedural tasks, or with the real DeepSeek-R1-Distill tokenizer for realistic
recipes (a 151k-token vocabulary on a few-layer model). The policy optionally gets gradient checkpointing (it is
then left in training mode, which is when transformers checkpoints; sampling switches to eval mode itself) and
LoRA adapters (deepseek_rl/lora.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

from deepseek_rl.config.schema import ModelConfig
from deepseek_rl.errors import ConfigError
from deepseek_rl.hub import load_model_config, load_pretrained
from deepseek_rl.models.char_tokenizer import build_char_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The character tokenizer, or that of a local directory or Hub id; always with a pad token, padding left."""
    source = cfg.tokenizer if cfg.tokenizer is not None else cfg.path
    if source in ("char", "char_chat"):
        return build_char_tokenizer(chat=source == "char_chat")
    key = "model.tokenizer" if cfg.tokenizer is not None else "model.path"
    tokenizer = load_pretrained(AutoTokenizer, str(source), key)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_model_config(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The config of a tiny random model whose vocabulary fits the tokenizer."""
    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}[cfg.arch]
    return config_class(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def load_model(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int = 0, trainable: bool = False
) -> PreTrainedModel:
    """The model of `cfg.path`, or a tiny random model initialised from `seed`. With `trainable` (the policy),
    gradient checkpointing and LoRA adapters are added as configured."""
    dtype = DTYPES[cfg.dtype]
    if cfg.path is None:
        config = tiny_model_config(cfg, tokenizer)
        config._attn_implementation = cfg.attn_implementation
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        initialize_tiny(model, seed)
    else:
        load_model_config(cfg.path)  # a clear error for a directory without config.json or an unreachable Hub id
        model = load_pretrained(
            AutoModelForCausalLM, cfg.path, "model.path", dtype=dtype, attn_implementation=cfg.attn_implementation
        )
    rows = model.get_input_embeddings().num_embeddings  # not weight.shape: ZeRO-3 partitions the weight
    if len(tokenizer) > rows:
        raise ConfigError(
            f"model.tokenizer has {len(tokenizer)} tokens but the model's embedding has only {rows} rows: "
            "use the model's own tokenizer"
        )
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config.eos_token_id is None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    if trainable and cfg.gradient_checkpointing:
        enable_checkpointing(model)
        model.train()
    if trainable and cfg.lora.enabled:
        from deepseek_rl.models.lora import apply_lora

        model = apply_lora(model, cfg.lora)
    return model


def enable_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each decoder layer in the backward pass: `activation_checkpointing_enable` since transformers 5.20,
    `gradient_checkpointing_enable` before (5.16-5.19, the releases vLLM pins; found by the GPU check)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


@torch.no_grad()
def initialize_tiny(model: nn.Module, seed: int, std: float = 0.02) -> None:
    """A seeded init that does not depend on how the model was built (plain, or partitioned by ZeRO-3's zero.Init):
    normal(0, std) for weight matrices and embeddings, 1 for norm scales, 0 for biases, in parameter-name order."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in sorted(model.named_parameters()):
        with gathered(param, modifier_rank=0):
            if param.ndim >= 2:
                values = torch.randn(param.shape, generator=generator) * std
            elif "norm" in name:
                values = torch.ones(param.shape)
            else:
                values = torch.zeros(param.shape)
            param.copy_(values.to(param.dtype))


@contextmanager
def gathered(param: nn.Parameter, modifier_rank: int | None = None) -> Iterator[None]:
    """The full parameter while inside, when ZeRO-3 partitions it (with modifier_rank, that rank's edits are kept)."""
    if not hasattr(param, "ds_id"):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters([param], modifier_rank=modifier_rank):
        yield


def model_config_only(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> PretrainedConfig:
    """The architecture config without weights (for checks before loading)."""
    if cfg.path is None:
        if tokenizer is None:
            tokenizer = load_tokenizer(cfg)
        return tiny_model_config(cfg, tokenizer)
    return load_model_config(cfg.path)


def eos_token_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> list[int]:
    """Every token that ends a completion: the tokenizer's EOS and the model's generation EOS ids."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return sorted(i for i in ids if i is not None)
