"""(prompt, completion) examples for fine-tuning: the cold start (SFT) and rejection-sampling fine-tuning (RFT).

From a split's rows, in one of two forms:
- chat data: `sft.messages_column` holds a conversation (a list of {role, content}); the completion is the content
  of the last assistant message, the prompt everything before it, rendered with the tokenizer's chat template and
  its generation prompt;
- prompt and completion columns: data.prompt_column (or data.prompt_template) rendered with data.template (plain,
  r1_zero or chat), and `sft.completion_column`.
When the rendered prompt already opens a think block (R1's chat template and the R1-Zero template end with
`<think>`), a completion that starts with `<think>` has it removed, so the model learns to continue the prompt, not to
open a second block. Completions end with EOS. Each example keeps at most `max_length` tokens: prompts are never
cut (a prompt that does not fit is an error naming the row), completions are, and the cut ones are counted.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from deepseek_rl.config.data import DataConfig
from deepseek_rl.data.files import row_labels
from deepseek_rl.data.prompts import is_messages, render_messages, render_prompt
from deepseek_rl.data.sources import load_rows, source_name, template_texts
from deepseek_rl.errors import ConfigError, DataError

THINK = "<think>"


@dataclass
class Examples:
    """Tokenized examples; completions end with EOS."""

    prompt_ids: list[list[int]]  # [D] unpadded prompt tokens
    completion_ids: list[list[int]]  # [D] unpadded completion tokens, EOS last
    # [D] per completion token: 1 trained on, 0 a tool's output in a tool-use demonstration (None: all 1)
    completion_weights: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def batch(self, indices: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> input_ids [M, P + C] (prompts left-padded, completions right-padded), attention_mask [M, P + C],
        loss_mask [M, C] (1 on completion tokens)."""
        p = max(len(self.prompt_ids[i]) for i in indices)
        c = max(len(self.completion_ids[i]) for i in indices)
        ids = torch.full((len(indices), p + c), pad_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for row, i in enumerate(indices):
            prompt, completion = self.prompt_ids[i], self.completion_ids[i]
            ids[row, p - len(prompt) : p] = torch.tensor(prompt)
            ids[row, p : p + len(completion)] = torch.tensor(completion)
            attention[row, p - len(prompt) : p + len(completion)] = 1
        loss_mask = attention[:, p:].float()
        if self.completion_weights is not None:
            for row, i in enumerate(indices):
                weights = self.completion_weights[i]
                loss_mask[row, : len(weights)] *= torch.tensor(weights, dtype=torch.float32)
        return ids, attention, loss_mask


def strip_reopened_think(prompt: str, completion: str) -> str:
    """The completion without a leading `<think>` when the prompt already opened one.

    >>> strip_reopened_think("<|Assistant|><think>\\n", "<think>\\nstep</think>42")
    'step</think>42'
    >>> strip_reopened_think("Q:", "<think>step</think>42")
    '<think>step</think>42'
    """
    if prompt.rstrip().endswith(THINK) and completion.lstrip().startswith(THINK):
        return completion.lstrip()[len(THINK) :].lstrip("\n")
    return completion


def tool_spans(completion: str, marker: str) -> list[tuple[str, int]]:
    """The completion as (text, weight) pieces: a tool's output (after `marker`, through its closing fence) weighs 0,
    the rest 1. The pieces are tokenized apart, as the rollout tokenizes the model's turns and the tool's outputs.

    >>> tool_spans("a```output\\n42\\n```\\nb", "```output")
    [('a```output', 1), ('\\n42\\n```\\n', 0), ('b', 1)]
    """
    pieces, rest = [], completion
    while (start := rest.find(marker)) >= 0:
        end = rest.find("\n```\n", start + len(marker))
        if end < 0:
            break
        end += len("\n```\n")
        pieces += [(rest[: start + len(marker)], 1), (rest[start + len(marker) : end], 0)]
        rest = rest[end:]
    return [(text, weight) for text, weight in [*pieces, (rest, 1)] if text]


def tokenize_examples(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    completions: list[str],
    max_length: int | None = None,
    tool_marker: str | None = None,
) -> tuple[Examples, int]:
    """Tokenize (prompt, completion) texts; returns the examples and how many completions were cut to fit. With a
    `tool_marker`, tool outputs in the completions are tokenized as their own pieces and not trained on."""
    encode = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt_ids, completion_ids, weights, cut = encode(prompts), [], [], 0
    eos = tokenizer.eos_token_id
    if tool_marker is None:
        encoded, weighted = encode(completions), None
    else:
        pieces = [tool_spans(text, tool_marker) for text in completions]
        encoded = [[t for text, _ in p for t in encode([text])[0]] for p in pieces]
        weighted = [[w for text, w in p for _ in encode([text])[0]] for p in pieces]
    for row, (prompt, completion) in enumerate(zip(prompt_ids, encoded, strict=True)):
        room = None if max_length is None else max_length - len(prompt) - 1  # one for EOS
        if room is not None and room < 1:
            raise DataError(
                f"example {row + 1}: the prompt is {len(prompt)} tokens, which leaves no room for a completion within "
                f"{max_length} tokens (sft.max_length, or the rollout lengths): raise it or shorten the prompt"
            )
        if room is not None and len(completion) > room:
            completion, cut = completion[:room], cut + 1
        completion_ids.append(completion + [eos])
        if weighted is not None:
            weights.append(weighted[row][: len(completion)] + [1])
    return Examples(prompt_ids, completion_ids, weights if weighted is not None else None), cut


def completion_text(value: Any) -> str:
    """A completion column's value as text: a string, or TRL's conversational completion (the assistant messages'
    contents, joined)."""
    if is_messages(value):
        return "".join(str(m["content"]) for m in value if m.get("role") == "assistant")
    return str(value)


def conversation_texts(
    rows: list[Any], column: str, tokenizer: PreTrainedTokenizerBase, labels: list[str]
) -> tuple[list[str], list[str]]:
    """Chat rows -> (prompt text through the generation prompt, last assistant message); `labels` name each row
    in errors ('<file>, line N')."""
    if tokenizer.chat_template is None:
        raise ConfigError(f"sft.messages_column={column} needs a tokenizer with a chat template")
    prompts, completions = [], []
    for row, messages in enumerate(rows):
        ok = isinstance(messages, list) and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages)
        if not ok or not messages or messages[-1]["role"] != "assistant":
            raise DataError(
                f"{labels[row]}: column '{column}' must be a list of {{role, content}} messages ending with "
                f"an assistant message (got {str(messages)[:80]!r})"
            )
        prompts.append(tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True))
        completions.append(str(messages[-1]["content"]))
    return prompts, completions


def load_examples(
    data: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    split: str,
    messages_column: str | None,
    completion_column: str,
    max_length: int | None,
    tool_marker: str | None = None,
) -> Examples:
    """A split's rows as tokenized fine-tuning examples (see the module docstring)."""
    rows = load_rows(data, split, prompts=messages_column is None)
    source = source_name(data, split)
    columns = {name: list(rows[name]) for name in rows.column_names}
    labels = row_labels(source, columns)  # pops the line column
    if messages_column is not None:
        if messages_column not in columns:
            raise DataError(f"sft.messages_column='{messages_column}' is not a column of {source}: {list(columns)}")
        prompts, completions = conversation_texts(columns[messages_column], messages_column, tokenizer, labels)
    else:
        if completion_column not in columns:
            raise DataError(f"sft.completion_column='{completion_column}' is not a column of {source}: {list(columns)}")
        raw = (
            columns[data.prompt_column]
            if data.prompt_template is None
            else template_texts(data.prompt_template, columns)
        )
        prompts = [
            render_messages(text, tokenizer, data.system_prompt, labels[row])[0]
            if is_messages(text)  # TRL's conversational prompt-completion format
            else render_prompt(text, data.template, tokenizer, data.system_prompt)
            for row, text in enumerate(raw)
        ]
        completions = [completion_text(c) for c in columns[completion_column]]
    completions = [strip_reopened_think(p, c) for p, c in zip(prompts, completions, strict=True)]
    examples, cut = tokenize_examples(tokenizer, prompts, completions, max_length, tool_marker)
    if cut:
        print(
            f"deepseek-rl: {cut} of {len(examples)} {split} completions were cut to fit {max_length} tokens",
            file=sys.stderr,
        )
    return examples
