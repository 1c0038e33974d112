"""Typed batches passed between the stages of one step: prompts -> rollouts -> scored rollouts -> loss inputs.

Shapes: B prompts on this rank, G generations per prompt, N = B * G completions, P prompt length (left-padded),
C completion length (right-padded), F reward functions, M rows of a micro-batch.
Groups are contiguous: rows [i * G, (i + 1) * G) of every per-completion tensor share prompt i.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class PromptBatch:
    """B rendered, tokenized prompts with their dataset columns."""

    input_ids: Tensor  # [B, P] long, left-padded
    attention_mask: Tensor  # [B, P] long, 1 on prompt tokens
    texts: list[str]  # [B] rendered prompt text
    columns: dict[str, list[Any]]  # column name -> [B] values, as the dataset holds them

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class RolloutBatch:
    """N = B * G sampled completions; prompts repeated G times so row i's prompt is prompt i // G."""

    prompt_ids: Tensor  # [N, P] long, left-padded
    prompt_mask: Tensor  # [N, P] long
    completion_ids: Tensor  # [N, C] long, padded with the pad id after the end
    completion_mask: Tensor  # [N, C] long, 1 up to and including EOS / the stop string's last token
    truncated: Tensor  # [N] bool, ran into max_completion_length without EOS or a stop string
    completions: list[str]  # [N] decoded completion text (special tokens removed)
    prompts: list[str]  # [N] rendered prompt text
    columns: dict[str, list[Any]]  # column name -> [N] values (each prompt's value repeated G times)
    group_size: int  # G
    # [N, C] float, the engine's log-prob of each sampled token (0 on padding); None when the engine gives none
    sampling_logprobs: Tensor | None = None
    # Multi-turn rollouts with tools (rollout/tools.py): [N, C] long, 1 on environment tokens (tool outputs, which
    # the loss never counts); and per trajectory [N] tool calls, calls that raised, calls that timed out
    tool_mask: Tensor | None = None
    tool_stats: dict[str, Tensor] | None = None

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    @staticmethod
    def of_prompts(
        prompts: PromptBatch,
        group_size: int,
        completion_ids: Tensor,
        completion_mask: Tensor,
        truncated: Tensor,
        completions: list[str],
        device: Any = None,
        **extras: Any,
    ) -> RolloutBatch:
        """The batch of B prompts' B * G completions, every engine's one constructor: each prompt (ids, text and
        columns) repeated for its G rows, the tensors on `device` (default: the completions'); `extras` are the
        optional fields (sampling_logprobs, tool_mask, tool_stats)."""
        device = device if device is not None else completion_ids.device
        return RolloutBatch(
            prompt_ids=prompts.input_ids.to(device).repeat_interleave(group_size, dim=0),  # [N, P]
            prompt_mask=prompts.attention_mask.to(device).repeat_interleave(group_size, dim=0),
            completion_ids=completion_ids.to(device),
            completion_mask=completion_mask.to(device),
            truncated=truncated.to(device),
            completions=completions,
            prompts=[text for text in prompts.texts for _ in range(group_size)],
            columns={k: [v for v in values for _ in range(group_size)] for k, values in prompts.columns.items()},
            group_size=group_size,
            **{k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in extras.items()},
        )

    @property
    def input_ids(self) -> Tensor:  # [N, P + C]
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:  # [N, P + C]
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    @property
    def completion_lengths(self) -> Tensor:  # [N] long
        return self.completion_mask.sum(dim=1)

    @property
    def sampled_mask(self) -> Tensor:  # [N, C] long: the completion tokens the policy sampled (not tool outputs)
        return self.completion_mask if self.tool_mask is None else self.completion_mask * (1 - self.tool_mask)

    def reward_columns(self) -> dict[str, list[Any]]:
        """Keyword arguments for rewards: the dataset columns, `prompts`, and unpadded `completion_ids` (TRL's)."""
        lengths = self.completion_lengths.tolist()
        ids = [row[:n] for row, n in zip(self.completion_ids.tolist(), lengths, strict=True)]
        return {**self.columns, "prompts": self.prompts, "completion_ids": ids}

    def select(self, rows: Tensor) -> RolloutBatch:
        """The rows [K] (indices) of the batch, in that order."""
        keep = rows.tolist()
        return RolloutBatch(
            prompt_ids=self.prompt_ids[rows],
            prompt_mask=self.prompt_mask[rows],
            completion_ids=self.completion_ids[rows],
            completion_mask=self.completion_mask[rows],
            truncated=self.truncated[rows],
            completions=[self.completions[i] for i in keep],
            prompts=[self.prompts[i] for i in keep],
            columns={k: [v[i] for i in keep] for k, v in self.columns.items()},
            group_size=self.group_size,
            sampling_logprobs=None if self.sampling_logprobs is None else self.sampling_logprobs[rows],
            tool_mask=None if self.tool_mask is None else self.tool_mask[rows],
            tool_stats=None if self.tool_stats is None else {k: v[rows] for k, v in self.tool_stats.items()},
        )

    @staticmethod
    def concat(parts: list[RolloutBatch]) -> RolloutBatch:
        """Stack batches row-wise; prompts are left-padded and completions right-padded to the widest (masked)."""
        p_width = max(b.prompt_ids.shape[1] for b in parts)
        c_width = max(b.completion_ids.shape[1] for b in parts)

        def left(t: Tensor) -> Tensor:
            return nn.functional.pad(t, (p_width - t.shape[1], 0))

        def right(t: Tensor) -> Tensor:
            return nn.functional.pad(t, (0, c_width - t.shape[1]))

        return RolloutBatch(
            prompt_ids=torch.cat([left(b.prompt_ids) for b in parts]),
            prompt_mask=torch.cat([left(b.prompt_mask) for b in parts]),
            completion_ids=torch.cat([right(b.completion_ids) for b in parts]),
            completion_mask=torch.cat([right(b.completion_mask) for b in parts]),
            truncated=torch.cat([b.truncated for b in parts]),
            completions=[c for b in parts for c in b.completions],
            prompts=[p for b in parts for p in b.prompts],
            columns={k: [v for b in parts for v in b.columns[k]] for k in parts[0].columns},
            group_size=parts[0].group_size,
            sampling_logprobs=(
                None
                if any(b.sampling_logprobs is None for b in parts)
                else torch.cat([right(b.sampling_logprobs) for b in parts])
            ),
            tool_mask=(
                None if any(b.tool_mask is None for b in parts) else torch.cat([right(b.tool_mask) for b in parts])
            ),
            tool_stats=(
                None
                if any(b.tool_stats is None for b in parts)
                else {k: torch.cat([b.tool_stats[k] for b in parts]) for k in parts[0].tool_stats}
            ),
        )


@dataclass
class ScoredBatch:
    """Rollouts with their rewards and group-relative advantages."""

    rollout: RolloutBatch
    reward_names: list[str]  # [F]
    reward_terms: Tensor  # [N, F] float, NaN where a reward returned None
    rewards: Tensor  # [N] float, weighted sum of the terms (None terms count as 0)
    advantages: Tensor  # [N] float
    loss_weight: Tensor  # [N] float, 1 for groups that train, 0 for filler groups (dynamic sampling)

    def __len__(self) -> int:
        return len(self.rollout)

    def select_groups(self, groups: Tensor) -> ScoredBatch:
        """The groups [K] (indices of groups of G rows), in that order."""
        g = self.rollout.group_size
        rows = (groups.unsqueeze(1) * g + torch.arange(g)).flatten()  # [K * G]
        return ScoredBatch(
            rollout=self.rollout.select(rows),
            reward_names=self.reward_names,
            reward_terms=self.reward_terms[rows],
            rewards=self.rewards[rows],
            advantages=self.advantages[rows],
            loss_weight=self.loss_weight[rows],
        )

    @staticmethod
    def concat(parts: list[ScoredBatch]) -> ScoredBatch:
        return ScoredBatch(
            rollout=RolloutBatch.concat([p.rollout for p in parts]),
            reward_names=parts[0].reward_names,
            reward_terms=torch.cat([p.reward_terms for p in parts]),
            rewards=torch.cat([p.rewards for p in parts]),
            advantages=torch.cat([p.advantages for p in parts]),
            loss_weight=torch.cat([p.loss_weight for p in parts]),
        )


@dataclass
class LossInputs:
    """What the loss needs for M completions; old/ref log-probs are present only when the algorithm needs them."""

    input_ids: Tensor  # [M, P + C] long
    attention_mask: Tensor  # [M, P + C] long
    loss_mask: Tensor  # [M, C] float, completion tokens that count in the loss
    advantages: Tensor  # [M] float
    old_logprobs: Tensor | None  # [M, C] float, policy at sampling time (num_iterations > 1)
    ref_logprobs: Tensor | None  # [M, C] float, frozen reference model (kl_coef > 0)
    sampling_logprobs: Tensor | None = None  # [M, C] float, the rollout engine's at sampling time (vLLM)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def completion_length(self) -> int:  # C
        return self.loss_mask.shape[1]

    def rows(self, start: int, stop: int) -> LossInputs:
        """Rows [start, stop): one micro-batch."""

        def cut(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[start:stop]

        return LossInputs(
            input_ids=self.input_ids[start:stop],
            attention_mask=self.attention_mask[start:stop],
            loss_mask=self.loss_mask[start:stop],
            advantages=self.advantages[start:stop],
            old_logprobs=cut(self.old_logprobs),
            ref_logprobs=cut(self.ref_logprobs),
            sampling_logprobs=cut(self.sampling_logprobs),
        )

    def select(self, rows: Tensor) -> LossInputs:
        """The rows [K] (indices, any order) as one micro-batch, without the columns that are padding in every one of
        them: left padding common to all prompts, completion columns after the longest completion."""
        attention = self.attention_mask[rows]  # [K, P + C]
        c = self.completion_length
        p = attention.shape[1] - c
        real_prompt = attention[:, :p].any(dim=0).nonzero()
        left = int(real_prompt[0]) if len(real_prompt) else p - 1
        real_completion = attention[:, p:].any(dim=0).nonzero()
        width = int(real_completion[-1]) + 1 if len(real_completion) else 1

        def cut(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[rows, :width]

        return LossInputs(
            input_ids=self.input_ids[rows, left : p + width],
            attention_mask=attention[:, left : p + width],
            loss_mask=self.loss_mask[rows, :width],
            advantages=self.advantages[rows],
            old_logprobs=cut(self.old_logprobs),
            ref_logprobs=cut(self.ref_logprobs),
            sampling_logprobs=cut(self.sampling_logprobs),
        )

    def with_logprobs(self, old: Tensor | None, ref: Tensor | None) -> LossInputs:
        return replace(self, old_logprobs=old, ref_logprobs=ref)
