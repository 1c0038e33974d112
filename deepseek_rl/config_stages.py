"""Configs of the pipeline stages other than GRPO: cold-start SFT, rejection-sampling fine-tuning, evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from deepseek_rl.config_checks import require


@dataclass
class SFTConfig:
    # Supervised fine-tuning on (prompt, completion) pairs: the cold start of the R1 pipeline.
    # Column with the target completion (procedural tasks: `solution`, a worked trace).
    completion_column: str = "solution"
    lr: float = 1.0e-3
    warmup_steps: int = 50
    batch_size: int = 64
    max_steps: int = 600
    # Every eval_every steps, sample one completion (temperature 1) per validation problem; stop as soon as
    # that accuracy reaches stop_accuracy (null: run max_steps). Stopping early leaves RL something to learn.
    eval_every: int = 10
    stop_accuracy: float | None = 0.15
    num_validation: int = 200

    def __post_init__(self) -> None:
        require(
            self.lr > 0 and self.batch_size >= 1 and self.max_steps >= 1, "sft.lr, batch_size, max_steps must be > 0"
        )
        require(self.eval_every >= 1, f"sft.eval_every={self.eval_every} must be >= 1")


@dataclass
class RFTConfig:
    # Rejection-sampling fine-tuning (R1's stage 3): sample `samples` completions for each of `num_prompts` train
    # prompts, keep those every reward in `verifiers` scores 1.0 (at most max_per_prompt distinct ones per prompt),
    # and fine-tune on them.
    num_prompts: int = 2000
    samples: int = 8
    temperature: float = 1.0
    max_per_prompt: int = 2
    verifiers: list[str] = field(default_factory=lambda: ["answer_match", "format"])
    lr: float = 3.0e-5
    batch_size: int = 64
    max_steps: int = 100

    def __post_init__(self) -> None:
        from deepseek_rl.rewards import resolve_reward

        require(self.samples >= 1 and self.num_prompts >= 1, "rft.samples and rft.num_prompts must be >= 1")
        for name in self.verifiers:
            resolve_reward(name)


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
    # The verifier (a reward scoring 1.0 when correct) and the format reward (null: no format rate).
    correctness: str = "answer_match"
    format_reward: str | None = "format"
    # Completions generated at once.
    batch_size: int = 512

    def __post_init__(self) -> None:
        from deepseek_rl.rewards import resolve_reward

        require(self.every >= 0, f"eval.every={self.every} must be >= 0")
        require(
            self.num_prompts >= 1 and self.every_prompts >= 1, "eval.num_prompts and eval.every_prompts must be >= 1"
        )
        require(self.samples >= 0 and self.every_samples >= 0, "eval.samples and eval.every_samples must be >= 0")
        resolve_reward(self.correctness)
        if self.format_reward is not None:
            resolve_reward(self.format_reward)

    def during_training(self) -> EvalConfig:
        return replace(self, num_prompts=self.every_prompts, samples=self.every_samples)
