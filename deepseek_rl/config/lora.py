"""The `model.lora` config: PEFT LoRA adapters on the policy instead of full fine-tuning (off by default)."""

from __future__ import annotations

from dataclasses import dataclass, field

from deepseek_rl.config.checks import require

# Every linear layer of a Llama/Qwen2 decoder block (attention and MLP); the embeddings and lm_head stay frozen.
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraConfig:
    # Rank of the adapters; 0 turns LoRA off (full fine-tuning). The update of each target W is (alpha / r) B A.
    r: int = 0
    alpha: float = 32.0
    dropout: float = 0.0
    # Names of the linear modules that get adapters (the last part of the module name).
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))

    def __post_init__(self) -> None:
        require(self.r >= 0, f"model.lora.r={self.r} must be >= 0 (0: LoRA off)")
        require(0 <= self.dropout < 1, f"model.lora.dropout={self.dropout} must be in [0, 1)")
        require(
            self.r == 0 or len(self.target_modules) > 0,
            "model.lora.target_modules is empty: name the linear layers that get adapters, e.g. [q_proj, v_proj]",
        )

    @property
    def enabled(self) -> bool:
        return self.r > 0
