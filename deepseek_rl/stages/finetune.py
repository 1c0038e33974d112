"""Supervised fine-tuning on the machinery GRPO uses: the cold start (sft.py) and rejection sampling (rft.py).

The same launch backends (one process, DDP, DeepSpeed ZeRO-2/3) and LoRA, the shared optimizer and LR schedule
(`optimizer.*`, with the stage's own lr and warmup), the same checkpoints, `trainer.resume=auto`, preemption,
tracking and Hugging Face export. setup -> `train(examples)` -> `finish()`:

- each step draws `batch_size` examples without replacement from seeded permutations (a function of seed and step,
  so a resumed run sees the same batches); rank r takes its contiguous share, in micro-batches with gradient
  accumulation;
- the loss is the mean negative log-likelihood over the completion tokens of the whole step on all ranks
  (algo/losses.py `nll_loss`): an example's prompt is context only, and a long completion weighs by its tokens;
- every `eval_every` steps an optional `check(step)` runs on every rank (rank 0 samples inside the engine's
  session) and may stop training early; the decision is rank 0's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from deepseek_rl.algo.logprobs import completion_logprobs
from deepseek_rl.algo.losses import backward_scale, nll_loss
from deepseek_rl.algo.update import check_finite_loss, optimizer_step
from deepseek_rl.config.plan import BatchPlan
from deepseek_rl.config.schema import Config
from deepseek_rl.data.examples import Examples
from deepseek_rl.data.prompts import rank_indices, step_indices
from deepseek_rl.errors import NumericalError
from deepseek_rl.infra.checkpoint import TrainerState
from deepseek_rl.infra.distributed import launched_world_size
from deepseek_rl.stages.run import close_stage, exports, open_stage, release, run_steps


@dataclass(frozen=True)
class Budget:
    """Where a fine-tuning run stops besides max_steps: training seconds (steps only, no evaluations) or trained
    tokens (completion tokens in the loss), counted from the stage's start (the control of stages/control.py)."""

    seconds: float | None = None
    tokens: float | None = None

    def spent(self, state: TrainerState) -> bool:
        return (self.seconds is not None and state.train_seconds >= self.seconds) or (
            self.tokens is not None and state.train_tokens >= self.tokens
        )


@dataclass(frozen=True)
class FineTuneSpec:
    """A fine-tuning stage's own settings (the rest is shared with GRPO through the config)."""

    stage: str  # sft | rft: the progress bar, the config group in errors, Preempted
    lr: float
    warmup_steps: int
    eval_every: int  # steps between calls of `check` (0: never)

    @staticmethod
    def of(cfg: Config, stage: str) -> FineTuneSpec:
        own = getattr(cfg, stage)
        return FineTuneSpec(stage, own.lr, own.warmup_steps, getattr(own, "eval_every", 0))


class FineTuner:
    """A fine-tuning stage on the scaffold (stages/run.py): the stage's `step` function over its examples, with the
    scaffold's loop, checkpoints, preemption and export."""

    def __init__(self, cfg: Config, spec: FineTuneSpec, output_dir: Path):
        self.cfg, self.spec = cfg, spec
        plan: BatchPlan = getattr(cfg, spec.stage).plan(launched_world_size())
        self.stage, _ = open_stage(cfg, spec.stage, plan, output_dir, spec.lr, spec.warmup_steps)

    # the scaffold's parts under the names the fine-tuning stages use
    plan = property(lambda self: self.stage.plan)
    accelerator = property(lambda self: self.stage.accelerator)
    output_dir = property(lambda self: self.stage.output_dir)
    tokenizer = property(lambda self: self.stage.tokenizer)
    policy = property(lambda self: self.stage.policy)
    optimizer = property(lambda self: self.stage.optimizer)
    scheduler = property(lambda self: self.stage.scheduler)
    state = property(lambda self: self.stage.state)
    tracker = property(lambda self: self.stage.tracker)
    engine = property(lambda self: self.stage.engine)
    is_main = property(lambda self: self.stage.is_main)
    rank = property(lambda self: self.stage.rank)

    def all_ranks(self, items: list) -> list:
        return self.stage.all_ranks(items)

    def rank_zero_value(self, value):
        return self.stage.rank_zero_value(value)

    def train(
        self, examples: Examples, check: Callable[[int], bool] | None = None, budget: Budget | None = None
    ) -> int:
        """Train until max_steps, until `check(step)` says stop, or until the `budget` of training seconds or tokens
        (cumulative in the trainer state, so a resumed run continues the count) is spent; returns the steps done."""

        def stop(done: int, metrics: dict[str, float]) -> bool:
            spent = budget is not None and budget.spent(self.state)
            if check is not None and self.spec.eval_every and done % self.spec.eval_every == 0:
                return bool(self.rank_zero_value(check(done))) or spent
            return spent

        try:
            return run_steps(self.stage, lambda index: self.step(examples, index), stop,
                             postfix=lambda m: {"loss": f"{m['loss']:.3f}"})  # fmt: skip
        except BaseException:
            release(self.stage)
            raise

    def step(self, examples: Examples, step: int) -> dict[str, float]:
        """One optimizer step on this step's batch (this rank's share, in micro-batches); returns its metrics."""
        plan, accelerator, start = self.plan, self.accelerator, time.perf_counter()
        pad_id, device = self.tokenizer.pad_token_id, accelerator.device
        self.policy.train()
        indices = step_indices(len(examples), plan.rows_per_step, step, self.cfg.trainer.seed)  # wraps into epochs
        mine = rank_indices(indices, self.rank, plan.world_size)
        micro = plan.micro_batch_size
        batches = [examples.batch(mine[i : i + micro], pad_id) for i in range(0, len(mine), micro)]
        tokens = accelerator.reduce(sum(b[2].sum() for b in batches).to(device), reduction="sum").item()
        scale = backward_scale("dapo", plan.world_size) * accelerator.gradient_accumulation_steps
        loss_sum, grad_norm = 0.0, torch.tensor(float("nan"))
        try:
            for index, (ids, attention, loss_mask) in enumerate(batches):
                with accelerator.accumulate(self.policy):
                    ids, attention, loss_mask = ids.to(device), attention.to(device), loss_mask.to(device)
                    packed = self.cfg.trainer.padding_free
                    logp, _ = completion_logprobs(self.policy, ids, attention, loss_mask.shape[1], packed=packed)
                    loss = nll_loss(logp, loss_mask, tokens)
                    check_finite_loss(loss, index, logp[loss_mask > 0], None)
                    accelerator.backward(loss * scale)
                    clip, optimizer = self.cfg.optimizer.max_grad_norm, self.optimizer
                    grad_norm = optimizer_step(accelerator, self.policy, optimizer, self.scheduler, clip, grad_norm)
                loss_sum += loss.detach()
        except NumericalError as err:
            message = f"{self.spec.stage} step {step + 1}: {err}".replace("algorithm.lr", f"{self.spec.stage}.lr")
            raise NumericalError(message) from None
        loss_value = accelerator.reduce(torch.as_tensor(loss_sum, device=device), reduction="sum").item()
        self.state.step = step + 1
        self.state.train_seconds += time.perf_counter() - start
        self.state.train_tokens += tokens
        return {
            "loss": loss_value,
            "lr": self.scheduler.get_last_lr()[0],
            "tokens": tokens,
            "grad_norm": float(grad_norm),
            "train/seconds": self.state.train_seconds,
            "train/tokens": self.state.train_tokens,
        }

    def finish(self) -> Path:
        """Rank reports, the HF export in `<output_dir>/final` (trainer.save_final, or when a later stage starts
        from it), summary.json; returns the export directory."""
        return close_stage(self.stage, exports(self.cfg, self.spec.stage))
