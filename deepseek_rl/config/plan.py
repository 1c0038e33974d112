"""The batch plan: how one training step's rows divide over ranks, micro-batches and optimizer steps.

Computed once at the entry point of a stage from the config and the launched world size, checked there (a batch
that does not divide fails with the key and the fix before any model loads), and passed down: nothing below
re-derives the geometry from the config.

GRPO: a step is `rows_per_step` completions = prompts_per_step x G; each rank keeps whole groups, so it holds
`prompts_per_rank` prompts and `rows_per_rank` completions, processed in `micro_batches` micro-batches of
`micro_batch_size` (the gradient accumulation steps), `passes` times (num_iterations): one optimizer step per pass.
SFT/RFT: the same with G = 1 (a row is one example) and one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from deepseek_rl.config.checks import require


@dataclass(frozen=True)
class BatchPlan:
    world_size: int
    rows_per_step: int  # completions (GRPO) or examples (SFT) per step, across all ranks
    group_size: int  # G (1 for fine-tuning)
    micro_batch_size: int  # rows per forward/backward on one rank
    passes: int  # optimizer steps per training step (algorithm.num_iterations; 1 for fine-tuning)
    max_steps: int  # training steps

    @property
    def prompts_per_step(self) -> int:
        return self.rows_per_step // self.group_size

    @property
    def prompts_per_rank(self) -> int:
        return self.prompts_per_step // self.world_size

    @property
    def rows_per_rank(self) -> int:
        return self.rows_per_step // self.world_size

    @property
    def micro_batches(self) -> int:
        """Micro-batches per rank and pass: accelerate's gradient accumulation steps."""
        return self.rows_per_rank // self.micro_batch_size

    @property
    def optimizer_steps(self) -> int:
        """What the LR schedule is sized by: one optimizer step per pass of every training step."""
        return self.max_steps * self.passes

    def first_row(self, rank: int) -> int:
        """Index of this rank's first row in the global batch (rows are split contiguously, rank by rank)."""
        return rank * self.rows_per_rank


def grpo_plan(
    batch_size: int, micro_batch_size: int, group_size: int, passes: int, max_steps: int, world_size: int
) -> BatchPlan:
    """The GRPO step's plan; ConfigError unless groups are whole per rank and micro-batches whole per rank."""
    b, g = batch_size, group_size
    require(
        b % g == 0,
        f"trainer.batch_size={b} does not divide into whole groups of algorithm.num_generations={g}: "
        f"use a multiple of {g} (e.g. {max(1, b // g) * g})",
    )
    require(
        b % (g * world_size) == 0,
        f"trainer.batch_size={b} gives {b // g} prompts per step, which do not split evenly over {world_size} ranks "
        f"(each rank keeps whole groups): use a multiple of {g * world_size}",
    )
    per_rank = b // world_size
    require(
        per_rank % micro_batch_size == 0,
        f"trainer.micro_batch_size={micro_batch_size} does not divide the {per_rank} completions per rank "
        f"(trainer.batch_size={b} over {world_size} ranks): pick a divisor of {per_rank}",
    )
    return BatchPlan(world_size, b, g, micro_batch_size, passes, max_steps)


def finetune_plan(stage: str, batch_size: int, micro_batch_size: int, max_steps: int, world_size: int) -> BatchPlan:
    """An SFT/RFT step's plan (`stage` names the config group in errors)."""
    require(
        batch_size % world_size == 0,
        f"{stage}.batch_size={batch_size} does not split evenly over {world_size} ranks: "
        f"use a multiple of {world_size}",
    )
    per_rank = batch_size // world_size
    require(
        per_rank % micro_batch_size == 0,
        f"{stage}.micro_batch_size={micro_batch_size} does not divide the {per_rank} examples per rank "
        f"({stage}.batch_size={batch_size} over {world_size} ranks): pick a divisor of {per_rank}",
    )
    return BatchPlan(world_size, batch_size, 1, micro_batch_size, 1, max_steps)
