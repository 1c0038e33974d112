"""A Hugging Face sequence-classification model as a reward (`reward.models.NAME=<directory or Hub id>`).

As in TRL: the score of a completion is the model's first logit on prompt + completion, computed without gradients
on the trainer's device, in batches of `reward.model_batch_size`, right-padded, without added special tokens. The
text is the rendered prompt followed by the completion; when the data is chat-formatted (the prompt set's
`prompt_messages` column) and the reward model's tokenizer has a chat template, the conversation (prompt messages +
the completion as the assistant's message) is rendered with the reward model's own template instead, as TRL does
for conversational data. The model is loaded whole on every rank (not sharded by ZeRO-3), in the dtype it was saved
in, and never trained.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from deepseek_rl.hub import load_pretrained
from deepseek_rl.rewards.runner import PROMPT_MESSAGES


class ModelReward:
    """The reward model `path` (config key `reward.models.<name>`) on `device`."""

    def __init__(self, name: str, path: str, device: torch.device | str = "cpu", batch_size: int = 16):
        key = f"reward.models.{name}"
        self.name, self.batch_size, self.device = name, batch_size, torch.device(device)
        self.tokenizer = load_pretrained(AutoTokenizer, path, key)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.model = load_pretrained(AutoModelForSequenceClassification, path, key, dtype="auto")
        if self.model.config.pad_token_id is None:  # the classifier reads the last non-pad token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval().requires_grad_(False)

    def texts(self, completions: list[str], columns: dict[str, list[Any]]) -> list[str]:
        """What the model reads for each completion (see the module docstring)."""
        messages = columns.get(PROMPT_MESSAGES)
        if messages is not None and getattr(self.tokenizer, "chat_template", None):
            return [
                self.tokenizer.apply_chat_template([*m, {"role": "assistant", "content": c}], tokenize=False)
                for m, c in zip(messages, completions, strict=True)
            ]
        prompts = columns.get("prompts") or [""] * len(completions)
        return [p + c for p, c in zip(prompts, completions, strict=True)]

    @torch.no_grad()
    def score(self, completions: list[str], columns: dict[str, list[Any]]) -> list[float]:
        """The first logit for each completion, [N] floats."""
        texts, scores = self.texts(completions, columns), []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            scores += self.model(**batch).logits[:, 0].float().cpu().tolist()
        return scores

    def close(self) -> None:
        self.model = None
