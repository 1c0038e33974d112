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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate.utils import gather_object, set_seed
from tqdm import tqdm

from deepseek_rl.algo.logprobs import completion_logprobs
from deepseek_rl.algo.losses import backward_scale, nll_loss
from deepseek_rl.algo.update import check_finite_loss, optimizer_step
from deepseek_rl.config.plan import BatchPlan
from deepseek_rl.config.schema import Config
from deepseek_rl.data.examples import Examples
from deepseek_rl.data.prompts import rank_indices, step_indices
from deepseek_rl.errors import NumericalError
from deepseek_rl.infra.checkpoint import TrainerState, export_hf, save_checkpoint
from deepseek_rl.infra.distributed import (
    any_rank,
    broadcast_value,
    launched_world_size,
    make_accelerator,
    write_rank_report,
)
from deepseek_rl.infra.optim import build_optimizer, lr_schedule
from deepseek_rl.infra.preemption import Preempted, Preemption
from deepseek_rl.infra.resume import resume_stage
from deepseek_rl.infra.tracking import RunTracker
from deepseek_rl.models.loading import eos_token_ids, load_model, load_tokenizer
from deepseek_rl.rollout.engine import BuiltinEngine
from deepseek_rl.rollout.tools import with_tools


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
    """The policy under accelerate with its optimizer, schedule, tracker and checkpoints (setup in __init__)."""

    def __init__(self, cfg: Config, spec: FineTuneSpec, output_dir: Path):
        self.cfg, self.spec = cfg, spec
        self.plan: BatchPlan = getattr(cfg, spec.stage).plan(launched_world_size())
        self.accelerator = make_accelerator(self.plan, cfg.optimizer.max_grad_norm)
        self.output_dir = Path(broadcast_value(self.accelerator, str(output_dir)))
        self.tokenizer = load_tokenizer(cfg.model)
        set_seed(cfg.trainer.seed)
        policy = load_model(cfg.model, self.tokenizer, seed=cfg.trainer.seed, trainable=True)
        eos_ids = eos_token_ids(self.tokenizer, policy)
        optimizer = build_optimizer(policy, spec.lr, cfg.optimizer)
        self.policy, self.optimizer = self.accelerator.prepare(policy, optimizer)
        self.scheduler = lr_schedule(self.optimizer, cfg.optimizer, self.plan.optimizer_steps, spec.warmup_steps)
        self.accelerator.register_for_checkpointing(self.scheduler)
        config, trainer = asdict(cfg), cfg.trainer  # a resume checks the checkpoint and its config
        state = resume_stage(
            self.accelerator, trainer.resume, trainer.resume_override, self.output_dir, config, spec.stage,
            self.optimizer, self.scheduler,
        )  # fmt: skip
        self.state = state or TrainerState(step=0)
        self.tracker = RunTracker(cfg.logger, self.output_dir, config, self.is_main, self.state)
        builtin = BuiltinEngine(self.policy, self.tokenizer, eos_ids, self.accelerator)
        self.engine = with_tools(builtin, cfg.rollout, eos_ids, cfg.reward.sandbox)
        self.preemption = Preemption()

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    def all_ranks(self, items: list) -> list:
        """Every rank's items, in rank order, on every rank."""
        return gather_object(items) if self.plan.world_size > 1 else items

    def rank_zero_value(self, value):
        return broadcast_value(self.accelerator, value)

    def train(
        self, examples: Examples, check: Callable[[int], bool] | None = None, budget: Budget | None = None
    ) -> int:
        """Train until max_steps, until `check(step)` says stop, or until the `budget` of training seconds or tokens
        (cumulative in the trainer state, so a resumed run continues the count) is spent; returns the steps done."""
        plan = self.plan
        progress = tqdm(
            range(self.state.step, plan.max_steps),
            desc=self.spec.stage,
            initial=self.state.step,
            total=plan.max_steps,
            disable=not self.is_main,
            dynamic_ncols=True,
        )
        for step in progress:
            metrics = self.step(examples, step)
            self.tracker.log(self.state.step, metrics)
            progress.set_postfix(loss=f"{metrics['loss']:.3f}")
            stop = budget is not None and budget.spent(self.state)
            if check is not None and self.spec.eval_every and self.state.step % self.spec.eval_every == 0:
                stop = bool(self.rank_zero_value(check(self.state.step))) or stop
            preempted = any_rank(self.accelerator, self.preemption.requested)
            every = self.cfg.trainer.save_every
            if preempted or (every and self.state.step % every == 0):
                save_checkpoint(
                    self.accelerator, self.output_dir, self.state, self.cfg.trainer.keep_last, self.tracker.run_config
                )
            if preempted:
                self.tracker.finish()
                self.preemption.close()
                raise Preempted(self.spec.stage, self.state.step)
            if stop:
                break
        return self.state.step

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
            raise NumericalError(f"{self.spec.stage} step {step + 1}: {err}") from None
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
        """Rank reports, the HF export in `<output_dir>/final`, summary.json; returns the export directory."""
        final = self.output_dir / "final"
        write_rank_report(self.accelerator, self.policy, self.output_dir / "rank_reports")
        export_hf(self.accelerator, self.policy, self.tokenizer, final)
        self.tracker.finish(summary=True)
        self.preemption.close()
        self.engine.close()
        return final
