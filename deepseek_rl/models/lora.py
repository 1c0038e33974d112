"""PEFT LoRA on the policy: low-rank adapters on the target linear layers, the base weights frozen.

Choices:
- Applied by `models.load_model` to the policy only, after the base weights are loaded (or a tiny model's seeded
  init), with PEFT's default init (B = 0): the adapted model starts exactly equal to the base. Adapters of a
  bf16/fp16 base are kept in fp32 (PEFT's default), so small learning rates are not rounded away.
- The reference model (algorithm.kl_coef > 0) is the policy with its adapters disabled (`disable_adapter()`):
  exactly the starting model, without a second copy of the weights.
- Export: `<run>/final` holds the adapters merged into the base (W + (alpha / r) B A for every adapted layer), a
  plain transformers model that `AutoModelForCausalLM.from_pretrained` loads like every other export (the next
  pipeline stage, `deepseek-rl eval`, inference servers); `<run>/adapter` holds the adapters alone in PEFT format
  (`PeftModel.from_pretrained(base_model, "<run>/adapter")`), a few MB to share. Merging works on the gathered
  state dict, so it is the same on every backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from deepseek_rl.config.lora import LoraConfig
from deepseek_rl.errors import ConfigError

PEFT_PREFIX = "base_model.model."
ADAPTER = "default"


def apply_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """The model wrapped with trainable LoRA adapters (a PeftModel); every other parameter is frozen."""
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model
    except ImportError as err:
        raise ConfigError("model.lora.r > 0 needs PEFT: pip install 'deepseek-rl[lora]' (or pip install peft)") from err
    settings = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, settings)
    except ValueError as err:
        raise ConfigError(f"model.lora.target_modules={list(cfg.target_modules)}: {err}") from err


def is_lora(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class AdapterDisabledReference(nn.Module):
    """The reference model of a LoRA policy: the same module with its adapters switched off (no grad needed)."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self._policy = [policy]  # a list, not a submodule: the parameters belong to the policy

    def forward(self, **kwargs: Any) -> Any:
        policy = self._policy[0]
        with policy.disable_adapter():
            return policy(**kwargs)


def merged_state_dict(state_dict: dict[str, Tensor], scaling: float) -> dict[str, Tensor]:
    """A PEFT LoRA model's full state dict -> the plain model's, each adapted weight replaced by W + scaling B A
    (computed in fp32, stored in W's dtype)."""
    merged = {
        key.removeprefix(PEFT_PREFIX).replace(".base_layer.", "."): value
        for key, value in state_dict.items()
        if ".lora_" not in key
    }
    suffix = f".lora_A.{ADAPTER}.weight"
    for key, a in state_dict.items():
        if not key.endswith(suffix):
            continue
        module = key.removesuffix(suffix)
        b = state_dict[f"{module}.lora_B.{ADAPTER}.weight"]
        name = f"{module.removeprefix(PEFT_PREFIX)}.weight"
        merged[name] = merged_weight(merged[name], a, b, scaling)
    return merged


def merged_weight(weight: Tensor, a: Tensor, b: Tensor, scaling: float) -> Tensor:
    """W + scaling B A for W [out, in], A [r, in], B [out, r]: computed in fp32, returned in W's dtype."""
    return (weight.float() + scaling * (b.float() @ a.float())).to(weight.dtype)


def save_lora_export(model: nn.Module, state_dict: dict[str, Tensor], final: Path, adapter: Path) -> None:
    """Write the merged model to `final` and the adapters alone to `adapter` (main process only)."""
    settings = model.peft_config[ADAPTER]
    scaling = settings.lora_alpha / settings.r
    model.save_pretrained(str(adapter), state_dict=state_dict, save_embedding_layers=False)
    base = model.get_base_model()
    with torch.no_grad():
        base.save_pretrained(final, state_dict=merged_state_dict(state_dict, scaling), safe_serialization=True)
