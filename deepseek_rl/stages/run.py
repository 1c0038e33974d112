"""The scaffold every training stage runs on (GRPO, SFT, RFT, the control): open -> run the steps -> close.

open_stage   the accelerator of the stage's batch plan, the run directory (rank 0's), the tokenizer, then a hook for
             what the stage must check before any weights load (data, rewards), the seeded policy (gradient
             checkpointing and LoRA as configured), AdamW and its LR schedule (sized in optimizer steps), the
             checkpoint when resuming, the tracker, the rollout engine and the preemption flag.
run_steps    the loop: `step(index) -> metrics` per training step, with the progress bar, logging, a checkpoint
             every trainer.save_every steps, and preemption (SIGTERM or Ctrl-C: finish the step, checkpoint, raise
             Preempted); `stop(step, metrics)` may end it early (the SFT stop rule, the control's budget).
close_stage  rank reports, the Hugging Face export in <output_dir>/final (trainer.save_final, or always when a
             later stage starts from it), summary.json; `release` frees the engine and the signal handler, also
             after a failure.
What is a stage's own (GRPO's reference model, rewards, collector, evaluator; fine-tuning's examples) stays in
the stage's module; the keys of `trainer.*` mean the same in every stage because only this module reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from deepseek_rl.config.plan import BatchPlan
from deepseek_rl.config.schema import Config
from deepseek_rl.infra.checkpoint import TrainerState, export_hf, save_checkpoint
from deepseek_rl.infra.distributed import (
    any_rank,
    broadcast_value,
    free_stage_memory,
    make_accelerator,
    write_rank_report,
)
from deepseek_rl.infra.optim import build_optimizer, lr_schedule
from deepseek_rl.infra.preemption import Preempted, Preemption
from deepseek_rl.infra.resume import resume_stage
from deepseek_rl.infra.tracking import RunTracker
from deepseek_rl.models.loading import eos_token_ids, load_model, load_tokenizer
from deepseek_rl.rollout.engine import BuiltinEngine, RolloutEngine
from deepseek_rl.rollout.tools import with_tools

Metrics = dict[str, float]


@dataclass
class Stage:
    """What every training stage has, built once by `open_stage`."""

    cfg: Config
    name: str  # the stage as checkpoints, the progress bar and Preempted name it (grpo, sft, rft)
    plan: BatchPlan
    accelerator: Accelerator
    output_dir: Path
    tokenizer: PreTrainedTokenizerBase
    policy: nn.Module
    optimizer: Any
    scheduler: Any
    state: TrainerState
    tracker: RunTracker
    engine: RolloutEngine
    eos_ids: list[int]
    preemption: Preemption

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    def all_ranks(self, items: list) -> list:
        """Every rank's items, in rank order, on every rank."""
        return gather_object(items) if self.plan.world_size > 1 else items

    def rank_zero_value(self, value: Any) -> Any:
        return broadcast_value(self.accelerator, value)


def make_engine(cfg: Config, policy, tokenizer, eos_ids: list[int], accelerator: Accelerator, run_dir: Path):
    """The rollout engine of `rollout.engine` (vLLM is imported only when selected), with tool calls when enabled,
    isolated as reward.sandbox says."""
    if cfg.rollout.engine == "builtin":
        engine = BuiltinEngine(policy, tokenizer, eos_ids, accelerator)
    else:
        from deepseek_rl.rollout.vllm_engine import VLLMEngine, engine_model_dir

        model_dir = engine_model_dir(cfg.model, accelerator.unwrap_model(policy), tokenizer, run_dir)
        seed = cfg.trainer.seed
        engine = VLLMEngine(model_dir, cfg.model, cfg.rollout, policy, tokenizer, eos_ids, accelerator, seed)
    return with_tools(engine, cfg.rollout, eos_ids, cfg.reward.sandbox)


def open_stage(
    cfg: Config,
    name: str,
    plan: BatchPlan,
    output_dir: Path,
    lr: float,
    warmup_steps: int,
    before_model: Callable[[Accelerator, PreTrainedTokenizerBase], Any] | None = None,
    engine: str = "builtin",
) -> tuple[Stage, Any]:
    """Build the stage (resuming its checkpoint when asked); returns it and what `before_model` returned. `engine`:
    builtin (the sampler on the policy: fine-tuning's evaluations) or rollout (rollout.engine: GRPO)."""
    accelerator = make_accelerator(plan, cfg.optimizer.max_grad_norm)
    output_dir = Path(broadcast_value(accelerator, str(output_dir)))
    if accelerator.is_main_process:  # a large model loads for minutes before the first step's progress bar
        model = cfg.model.path or f"a tiny {cfg.model.arch} built from its config"
        print(f"deepseek-rl: {name}: loading {model}", flush=True)
    tokenizer = load_tokenizer(cfg.model)
    prepared = before_model(accelerator, tokenizer) if before_model is not None else None
    set_seed(cfg.trainer.seed)
    policy = load_model(cfg.model, tokenizer, seed=cfg.trainer.seed, trainable=True)
    eos_ids = eos_token_ids(tokenizer, policy)
    optimizer = build_optimizer(policy, lr, cfg.optimizer)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    scheduler = lr_schedule(optimizer, cfg.optimizer, plan.optimizer_steps, warmup_steps * plan.passes)
    accelerator.register_for_checkpointing(scheduler)
    config, trainer = asdict(cfg), cfg.trainer  # a resume checks the checkpoint and its config (infra/resume.py)
    state = resume_stage(
        accelerator, trainer.resume, trainer.resume_override, output_dir, config, name, optimizer, scheduler
    )
    state = state or TrainerState(step=0)
    tracker = RunTracker(cfg.logger, output_dir, config, accelerator.is_main_process, state)
    if engine == "rollout":
        rollouts = make_engine(cfg, policy, tokenizer, eos_ids, accelerator, output_dir)
    else:
        rollouts = with_tools(BuiltinEngine(policy, tokenizer, eos_ids, accelerator), cfg.rollout, eos_ids,
                              cfg.reward.sandbox)  # fmt: skip
    stage = Stage(
        cfg, name, plan, accelerator, output_dir, tokenizer, policy, optimizer, scheduler, state, tracker, rollouts,
        eos_ids, Preemption(),
    )  # fmt: skip
    return stage, prepared


def run_steps(
    stage: Stage,
    step: Callable[[int], Metrics],
    stop: Callable[[int, Metrics], bool] | None = None,
    postfix: Callable[[Metrics], dict[str, str]] | None = None,
) -> int:
    """Run `step(index)` from the resumed step to plan.max_steps (or until `stop` says so); returns the steps done.
    Raises Preempted after writing a checkpoint when a signal asked the run to stop."""
    progress = tqdm(
        range(stage.state.step, stage.plan.max_steps),
        desc=stage.name,
        initial=stage.state.step,
        total=stage.plan.max_steps,
        disable=not stage.is_main,
        dynamic_ncols=True,
    )
    for index in progress:
        metrics = step(index)
        stage.tracker.log(stage.state.step, metrics)
        progress.set_postfix(postfix(metrics) if postfix else {"loss": f"{metrics.get('loss', float('nan')):.4f}"})
        done = stop is not None and stop(stage.state.step, metrics)
        preempted = any_rank(stage.accelerator, stage.preemption.requested)
        every = stage.cfg.trainer.save_every
        if preempted or (every and stage.state.step % every == 0):
            keep, config = stage.cfg.trainer.keep_last, stage.tracker.run_config
            save_checkpoint(stage.accelerator, stage.output_dir, stage.state, keep, config)
        if preempted:
            stage.tracker.finish()
            raise Preempted(stage.name, stage.state.step)
        if done:
            break
    return stage.state.step


def close_stage(stage: Stage, export: bool) -> Path:
    """After the last step: rank reports, the export (when `export`), summary.json; returns <output_dir>/final."""
    final = stage.output_dir / "final"
    write_rank_report(stage.accelerator, stage.policy, stage.output_dir / "rank_reports")
    if export:
        export_hf(stage.accelerator, stage.policy, stage.tokenizer, final)
    stage.tracker.finish(summary=True)
    release(stage)
    return final


def release(stage: Stage) -> None:
    """Free the engine, the signal handler and the model, optimizer and DeepSpeed engine that accelerate holds (after
    the last step, a failure or a preemption); safe twice."""
    free_stage_memory(stage.accelerator)  # first: closing a vLLM engine takes DeepSpeed's process-group state down
    stage.engine.close()
    stage.preemption.close()


def exports(cfg: Config, stage: str) -> bool:
    """Whether a stage writes <output_dir>/final: trainer.save_final, or always when a later stage of the pipeline
    starts from it (the same meaning in every stage)."""
    later = cfg.stages[cfg.stages.index(stage) + 1 :] if stage in cfg.stages else []
    return cfg.trainer.save_final or bool(later)
