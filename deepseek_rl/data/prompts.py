"""Prompts: rows -> rendered, tokenized prompts -> per-step, per-rank batches.

Rendering: `plain` uses the prompt text as is; `r1_zero` wraps it in DeepSeek-R1-Zero's "think then answer"
template (which ends by opening `<think>`); `chat` applies the tokenizer's chat template with the generation prompt,
and keeps each prompt's messages in the `prompt_messages` column (users' rewards get them as `prompts`, as in TRL).
Batches are drawn without replacement from a seeded permutation per epoch; step s uses global positions
[s * prompts_per_step, (s + 1) * prompts_per_step) and rank r takes its contiguous share, so a step's prompts
depend only on (seed, step) and resuming needs nothing but the step.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from deepseek_rl.batch import PromptBatch
from deepseek_rl.config.data import DataConfig
from deepseek_rl.data.files import row_labels
from deepseek_rl.data.sources import load_rows, source_name, template_texts
from deepseek_rl.errors import ConfigError, DataError
from deepseek_rl.rewards.runner import PROMPT_MESSAGES

R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: {prompt}. Assistant: <think>"
)


def render_prompt(text: str, template: str, tokenizer: PreTrainedTokenizerBase, system_prompt: str | None) -> str:
    if template == "plain":
        return text
    if template == "r1_zero":
        return R1_ZERO_TEMPLATE.format(prompt=text)
    if tokenizer.chat_template is None:
        raise ConfigError(
            "data.template=chat but the tokenizer has no chat template: use data.template=plain or r1_zero"
        )
    return tokenizer.apply_chat_template(chat_messages(text, system_prompt), tokenize=False, add_generation_prompt=True)


def is_messages(value: Any) -> bool:
    """TRL's conversational format: a list of {role, content} messages."""
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in value)
    )


def render_messages(
    messages: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, system_prompt: str | None, label: str
) -> tuple[str, list[dict[str, Any]]]:
    """A conversational prompt (TRL's format) rendered with the tokenizer's chat template and the generation prompt,
    whatever data.template says; returns the text and the messages (with data.system_prompt first if it has none)."""
    if tokenizer.chat_template is None:
        raise DataError(
            f"{label}: the prompt is a list of chat messages (TRL's conversational format) but the tokenizer has no "
            "chat template: use a model whose tokenizer has one, model.tokenizer=char_chat for the tiny models "
            "(the smoke_chat recipe), or plain-text prompts"
        )
    if system_prompt and messages[0].get("role") != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), messages


def chat_messages(text: str, system_prompt: str | None) -> list[dict[str, str]]:
    """The prompt as chat messages (what `data.template=chat` renders, and what users' rewards get as `prompts`)."""
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": text}
    ]


@dataclass
class PromptSet:
    """All prompts of a split, rendered and tokenized once, with every column kept for the rewards."""

    texts: list[str]  # [D] rendered prompts
    token_ids: list[list[int]]  # [D] unpadded prompt tokens
    columns: dict[str, list[Any]]  # column -> [D]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, count: int) -> PromptSet:
        """The first `count` prompts."""
        return self.select(list(range(min(count, len(self)))))

    def select(self, indices: list[int]) -> PromptSet:
        """The prompts at `indices`, in that order."""
        return PromptSet(
            [self.texts[i] for i in indices],
            [self.token_ids[i] for i in indices],
            {k: [v[i] for i in indices] for k, v in self.columns.items()},
        )

    def batch(self, indices: list[int], pad_id: int) -> PromptBatch:
        """Left-pad the chosen prompts into one PromptBatch."""
        length = max(len(self.token_ids[i]) for i in indices)
        input_ids = torch.full((len(indices), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(indices), length), dtype=torch.long)
        for row, i in enumerate(indices):
            ids = self.token_ids[i]
            input_ids[row, length - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, length - len(ids) :] = 1
        return PromptBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            texts=[self.texts[i] for i in indices],
            columns={k: [v[i] for i in indices] for k, v in self.columns.items()},
        )


def build_prompt_set(
    cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, max_prompt_length: int, split: str = "train"
) -> PromptSet:
    """Load, render and tokenize a split; a prompt that is empty is an error naming its row, and so is one that is
    too long unless data.drop_long_prompts (then it is left out, and the count reported)."""
    dataset = load_rows(cfg, split)
    columns = {name: list(dataset[name]) for name in dataset.column_names}
    source = source_name(cfg, split)
    labels = row_labels(source, columns)  # '<file>, line N' (pops the line column: rewards never see it)
    texts, token_ids, kept, messages = [], [], [], []
    template = cfg.prompt_template
    raw_texts = columns[cfg.prompt_column] if template is None else template_texts(template, columns)
    conversational = False
    for row, raw in enumerate(raw_texts):
        if is_messages(raw):  # TRL's conversational dataset: rendered with the chat template
            text, chat = render_messages(raw, tokenizer, cfg.system_prompt, labels[row])
            conversational = True
        elif not isinstance(raw, str) or not raw.strip():
            raise DataError(
                f"{labels[row]}: column '{cfg.prompt_column}' is empty or not text ({str(raw)[:80]!r}); a prompt is "
                "text or a list of {role, content} chat messages"
            )
        else:
            text, chat = render_prompt(raw, cfg.template, tokenizer, cfg.system_prompt), None
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_prompt_length and cfg.drop_long_prompts:
            continue
        if len(ids) > max_prompt_length:
            raise DataError(
                f"{labels[row]}: the rendered prompt is {len(ids)} tokens, over "
                f"rollout.max_prompt_length={max_prompt_length}; raise it, set data.drop_long_prompts=true, or set "
                "data.max_rows / filter the file"
            )
        texts.append(text)
        token_ids.append(ids)
        kept.append(row)
        messages.append(chat if chat is not None else chat_messages(raw, cfg.system_prompt))
    if len(kept) < len(raw_texts):
        print(
            f"deepseek-rl: dropped {len(raw_texts) - len(kept)} of {len(raw_texts)} {split} prompts longer than "
            f"rollout.max_prompt_length={max_prompt_length} (data.drop_long_prompts)",
            file=sys.stderr,
        )
        columns = {name: [values[i] for i in kept] for name, values in columns.items()}
    if not kept:
        raise DataError(f"{source}: every {split} prompt is longer than rollout.max_prompt_length")
    if cfg.template == "chat" or conversational:  # users' rewards get messages, as TRL passes conversational prompts
        columns[PROMPT_MESSAGES] = messages
        if conversational:  # the rewards' `prompts` are the messages; the raw column would repeat them
            columns[cfg.prompt_column] = [m[-1]["content"] if m else "" for m in messages]
    return PromptSet(texts=texts, token_ids=token_ids, columns=columns)


def step_indices(num_prompts: int, prompts_per_step: int, step: int, seed: int) -> list[int]:
    """The dataset rows of step `step` across all ranks: epochs of seeded permutations, read in order."""
    indices, perm_epoch, perm = [], -1, None
    for position in range(step * prompts_per_step, (step + 1) * prompts_per_step):
        epoch = position // num_prompts
        if epoch != perm_epoch:
            perm = torch.randperm(num_prompts, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
            perm_epoch = epoch
        indices.append(int(perm[position % num_prompts]))
    return indices


def rank_indices(indices: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's contiguous share of a step's prompts."""
    per_rank = len(indices) // world_size
    return indices[rank * per_rank : (rank + 1) * per_rank]
