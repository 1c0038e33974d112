"""Saving the policy: the final export in Hugging Face format (config, safetensors, tokenizer, generation config)."""

from __future__ import annotations

from pathlib import Path

from accelerate import Accelerator
from torch import nn
from transformers import PreTrainedTokenizerBase


def export_hf(accelerator: Accelerator, model: nn.Module, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """Write the policy so that `AutoModelForCausalLM.from_pretrained(directory)` loads it unchanged.

    `get_state_dict` gathers sharded parameters (ZeRO-3) on every rank; only the main process writes.
    """
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        accelerator.unwrap_model(model).save_pretrained(directory, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(directory)
    accelerator.wait_for_everyone()
