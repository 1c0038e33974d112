"""Configs of the pipeline stages other than GRPO: cold-start SFT, rejection-sampling fine-tuning, evaluation.

SFT and RFT train under the same machinery as GRPO (stages/finetune.py): the launch's backend, `optimizer.*`
(betas, eps, weight decay, schedule, gradient clipping), the `trainer.*` checkpointing, resume and export. What is
their own is here: learning rate, warmup, batch geometry and step count.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from deepseek_rl.config.checks import one_of, require
from deepseek_rl.config.plan import BatchPlan, finetune_plan


@dataclass
class SFTConfig:
    # Supervised fine-tuning on (prompt, completion) pairs: the cold start of the R1 pipeline. The loss is the mean
    # negative log-likelihood of the completion tokens of the whole step; prompt tokens are context only.
    # Where the pairs come from: `messages_column` (chat data: a list of {role, content}; the completion is the
    # last assistant message, the prompt everything before it, rendered with the tokenizer's chat template), else
    # data.prompt_column (rendered with data.template) and `completion_column` (procedural tasks: `solution`).
    messages_column: str | None = None
    completion_column: str = "solution"
    lr: float = 1.0e-3
    # Linear warmup over the first steps, then optimizer.schedule (constant, linear or cosine to 0 at max_steps).
    warmup_steps: int = 50
    # Examples per optimizer step across all ranks, and per forward/backward on one rank (null: all of the rank's).
    batch_size: int = 64
    micro_batch_size: int | None = None
    max_steps: int = 600
    # Tokens per example (prompt + completion); longer completions are cut (counted and reported).
    # null: rollout.max_prompt_length + rollout.max_completion_length.
    max_length: int | None = None
    # Every eval_every steps, decode each validation problem greedily and sample one completion (temperature 1),
    # log both accuracies, and stop at the first check where `stop_metric` (greedy_accuracy | sampled_accuracy)
    # reaches stop_accuracy and the greedy accuracy lies inside `stop_greedy_band` [low, high] (null: no band); a
    # check above the band does not stop, training goes on to the next check inside it (null stop_accuracy: never
    # stop early; 0 for eval_every: no checks). Stopping early leaves RL something to learn; the band keeps that
    # true when the steep, noisy part of the curve lands differently on another CPU (docs/robustness.md).
    eval_every: int = 10
    stop_metric: str = "sampled_accuracy"
    stop_accuracy: float | None = 0.15
    stop_greedy_band: list[float] | None = None
    num_validation: int = 200

    def __post_init__(self) -> None:
        require(self.lr > 0, f"sft.lr={self.lr} must be > 0")
        require(self.batch_size >= 1, f"sft.batch_size={self.batch_size} must be >= 1")
        require(self.max_steps >= 1, f"sft.max_steps={self.max_steps} must be >= 1")
        require(self.warmup_steps >= 0, f"sft.warmup_steps={self.warmup_steps} must be >= 0")
        require(self.eval_every >= 0, f"sft.eval_every={self.eval_every} must be >= 0 (0: no validation checks)")
        one_of("sft.stop_metric", self.stop_metric, ("greedy_accuracy", "sampled_accuracy"))
        band = self.stop_greedy_band
        require(
            band is None or (len(band) == 2 and 0 <= band[0] <= band[1] <= 1),
            f"sft.stop_greedy_band={band} must be [low, high] with 0 <= low <= high <= 1 (or null)",
        )
        require(
            self.micro_batch_size is None or self.micro_batch_size >= 1,
            f"sft.micro_batch_size={self.micro_batch_size} must be >= 1 (or null)",
        )

    def plan(self, world_size: int) -> BatchPlan:
        micro = self.micro_batch_size or self.batch_size // max(world_size, 1) or 1
        return finetune_plan("sft", self.batch_size, micro, self.max_steps, world_size)


@dataclass
class RFTConfig:
    # Rejection-sampling fine-tuning (R1's stage 3): sample `samples` completions for each of `num_prompts` train
    # prompts, keep those every reward in `verifiers` scores 1.0 (at most max_per_prompt distinct ones per prompt),
    # and fine-tune on them with the SFT loss.
    num_prompts: int = 2000
    samples: int = 8
    temperature: float = 1.0
    max_per_prompt: int = 2
    verifiers: list[str] = field(default_factory=lambda: ["answer_match", "format"])  # checked by Config
    lr: float = 3.0e-5
    warmup_steps: int = 0
    batch_size: int = 64
    micro_batch_size: int | None = None
    max_steps: int = 100

    def __post_init__(self) -> None:
        require(self.samples >= 1 and self.num_prompts >= 1, "rft.samples and rft.num_prompts must be >= 1")
        require(self.lr > 0, f"rft.lr={self.lr} must be > 0")
        require(self.batch_size >= 1 and self.max_steps >= 1, "rft.batch_size and rft.max_steps must be >= 1")

    def plan(self, world_size: int) -> BatchPlan:
        micro = self.micro_batch_size or self.batch_size // max(world_size, 1) or 1
        return finetune_plan("rft", self.batch_size, micro, self.max_steps, world_size)


@dataclass
class ControlConfig:
    # The control for RL (stage `control`, after `sft` and `grpo`): SFT continued from the cold-start checkpoint on
    # the same demonstrations with sft.* (lr, batch; no early stop), given the GRPO stage's budget, so that RL's gain
    # can be told from more training. One run per budget: `time` (GRPO's training seconds, its steps without the
    # evaluations) and `tokens` (GRPO's trained completion tokens).
    budgets: list[str] = field(default_factory=lambda: ["time", "tokens"])
    # Held-out evaluations along the way (eval.during_training's settings), at this many equal shares of the budget.
    evaluations: int = 10

    def __post_init__(self) -> None:
        require(len(self.budgets) > 0, "control.budgets is empty: give time, tokens or both")
        for budget in self.budgets:
            require(budget in ("time", "tokens"), f"control.budgets has '{budget}': use time and/or tokens")
        require(self.evaluations >= 1, f"control.evaluations={self.evaluations} must be >= 1")


@dataclass
class EvalConfig:
    # Held-out evaluation (the `eval` split) by the eval stage: greedy accuracy on `num_prompts` problems, and
    # `samples` completions per problem at `temperature` for sampled accuracy, pass@k and maj@k, format rate, lengths.
    num_prompts: int = 500
    samples: int = 8
    temperature: float = 1.0
    # During GRPO, every `every` steps (and before the first and after the last; 0: never): the same on the first
    # `every_prompts` problems, with `every_samples` samples each (0: greedy only, which is cheap).
    every: int = 0
    every_prompts: int = 200
    every_samples: int = 0
    # The verifier (a reward scoring 1.0 when correct) and the format reward (null: no format rate): names of the
    # reward table, of reward.functions or of reward.models (checked by Config). The verifier also decides which
    # sampled answers are the same answer for maj@k.
    correctness: str = "answer_match"
    format_reward: str | None = "format"
    # Completions generated at once.
    batch_size: int = 512

    def __post_init__(self) -> None:
        require(self.every >= 0, f"eval.every={self.every} must be >= 0")
        require(
            self.num_prompts >= 1 and self.every_prompts >= 1, "eval.num_prompts and eval.every_prompts must be >= 1"
        )
        require(self.samples >= 0 and self.every_samples >= 0, "eval.samples and eval.every_samples must be >= 0")

    def during_training(self) -> EvalConfig:
        return replace(self, num_prompts=self.every_prompts, samples=self.every_samples)
