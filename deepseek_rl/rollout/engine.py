"""Rollout engines: what the stages call to sample completions, whichever engine does the sampling.

The contract (every engine keeps it): `generate` returns G completions per prompt, groups contiguous, sampled with
`rollout.*` (temperature, top-p, top-k, max_completion_length, EOS and stop strings); the completion token ids are
the ones the engine sampled (the trainer scores exactly those, never a re-tokenization of the text); the sampling
noise of row i of a step's global batch is a function of (seed, i), so 1 or N ranks and a resumed run sample alike.

A stage opens a `session()` around each rollout phase: the built-in engine gathers ZeRO-3 parameters there once for
all the phase's decoding; an engine with its own copy of the weights (vLLM) wakes up and loads the policy's
weights there if `policy_updated()` was called since it last did.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol, runtime_checkable

from accelerate import Accelerator
from torch import nn
from transformers import PreTrainedTokenizerBase

from deepseek_rl.batch import PromptBatch, RolloutBatch
from deepseek_rl.config.rollout import RolloutConfig
from deepseek_rl.data.prompts import PromptSet
from deepseek_rl.infra.distributed import generation_model
from deepseek_rl.rollout.sampler import RowUniforms, generate_rollouts
from deepseek_rl.rollout.seeds import RowNoise, complete_seed


@runtime_checkable
class RolloutEngine(Protocol):
    """What an engine is: the sampling contract above, whatever samples (the built-in sampler, vLLM, a tool loop
    around either, a wrapper that stops on a signal)."""

    tokenizer: PreTrainedTokenizerBase

    def session(self) -> AbstractContextManager[None]:
        """Around each rollout phase (the built-in engine gathers ZeRO-3 weights; vLLM syncs its weights)."""
        ...

    def generate(self, prompts: PromptBatch, group_size: int, cfg: RolloutConfig, noise: RowNoise) -> RolloutBatch:
        """B prompts -> B * G completions, the sampling noise of each from `noise` (its seed and the rows of the
        global batch this call samples). Call inside `session()`."""
        ...

    def policy_updated(self) -> None:
        """The policy's weights changed (an optimizer step): an engine with its own copy reloads them."""
        ...

    def close(self) -> None:
        """Release what the engine holds (processes, device memory)."""
        ...

    def pop_sync_seconds(self) -> float | None:
        """Seconds spent loading the policy's weights since the last call (None: this engine has no copy)."""
        ...


def complete(
    engine: RolloutEngine,
    prompts: PromptSet,
    count: int,
    n: int,
    cfg: RolloutConfig,
    seed: int,
    batch_size: int,
    first: int = 0,
) -> Iterator[RolloutBatch]:
    """n completions for each of the prompts [first, first + count), as RolloutBatches of whole groups (at most
    `batch_size` completions each), in order (evaluation, rejection sampling). Batches start at multiples of
    batch_size // n counted from prompt 0, and their noise is seeded by (seed, that start), so a range split at those
    multiples over several ranks samples what one process would. Opens the engine's session."""
    per_batch = max(1, batch_size // n)
    stop = min(first + count, len(prompts))
    with engine.session():
        for start in range(first, stop, per_batch):
            indices = list(range(start, min(start + per_batch, stop)))
            batch = prompts.batch(indices, engine.tokenizer.pad_token_id)
            rows = len(indices) * n
            yield engine.generate(batch, n, cfg, RowNoise(complete_seed(seed, start), rows))


class BuiltinEngine:
    """The KV-cached sampler of rollout/sampler.py on the policy itself (no copy of the weights, nothing to sync).

    With an accelerator the policy is the prepared (wrapped) model: the session gathers ZeRO-3 parameters once and
    runs under the accelerator's autocast (bf16 mixed precision: the sampler's matrix products and KV cache in bf16,
    as the training forward computes, not in the fp32 of the master weights). Without one, `model` is a plain model
    (evaluation of a checkpoint)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        eos_ids: list[int],
        accelerator: Accelerator | None = None,
        logprobs: bool = False,
    ):
        self.model, self.tokenizer, self.eos_ids, self.accelerator = model, tokenizer, eos_ids, accelerator
        self.logprobs = logprobs  # return the sampler's log-probs (the behaviour policy of asynchronous rollouts)
        self._bare: nn.Module | None = None

    @contextmanager
    def session(self) -> Iterator[None]:
        if self._bare is not None:  # nested (a held-out evaluation inside a stage's session)
            yield
            return
        if self.accelerator is None:
            self._bare = self.model
            try:
                yield
            finally:
                self._bare = None
            return
        # under accelerate's mixed precision the sampler computes as the training forward does (its autocast)
        with generation_model(self.accelerator, self.model) as bare, self.accelerator.autocast():
            self._bare = bare
            try:
                yield
            finally:
                self._bare = None

    def generate(self, prompts: PromptBatch, group_size: int, cfg: RolloutConfig, noise: RowNoise) -> RolloutBatch:
        if self._bare is None:
            raise RuntimeError("BuiltinEngine.generate outside session()")
        rows = list(noise.rows) if noise.rows is not None else None
        uniforms = RowUniforms(noise.seed, noise.total_rows, noise.first_row, len(prompts) * group_size, rows)
        return generate_rollouts(
            self._bare, self.tokenizer, prompts, cfg, group_size, self.eos_ids, uniforms, self.logprobs
        )

    def policy_updated(self) -> None:
        """Nothing to do: it samples from the policy itself."""

    def close(self) -> None:
        """Nothing held beyond a rollout."""

    def pop_sync_seconds(self) -> float | None:
        return None
