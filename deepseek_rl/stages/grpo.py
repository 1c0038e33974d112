"""The GRPO stage: one explicit loop in three phases, setup -> step -> finish.

    deepseek-rl train --config-name smoke trainer.max_steps=10
    accelerate launch --config_file launch/zero2.yaml -m deepseek_rl.train --config-name smoke

setup    everything fixed for the run, in one `GRPORun`: the batch plan, the accelerator, policy (and a frozen
         reference only when kl_coef > 0 or log_kl), optimizer and LR schedule sized in optimizer steps, the
         rollout engine, the reward set, the tracker; a checkpoint is restored when resuming.
step     on every rank: sample G completions for each of this rank's prompts (groups stay on the rank) and score
         them -> group-relative advantages -> old / reference log-probs if the algorithm needs them -> micro-batched
         clipped-surrogate update (num_iterations optimizer steps) -> the engine is told the weights changed ->
         statistics reduced across ranks, logged by rank 0.
finish   rank reports, the final policy in Hugging Face format, summary.json.
A checkpoint is written every `trainer.save_every` steps; SIGTERM (preemption) finishes the current step, writes a
checkpoint and raises `Preempted`; `trainer.resume=auto` continues from the newest checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from tqdm import tqdm

from deepseek_rl.algo.reward_set import RewardSet
from deepseek_rl.algo.update import UpdateSettings, add_old_and_ref_logprobs, build_loss_inputs, update_policy
from deepseek_rl.config.plan import BatchPlan
from deepseek_rl.config.schema import Config
from deepseek_rl.data.prompts import build_prompt_set
from deepseek_rl.data.sources import source_name
from deepseek_rl.errors import ConfigError, NumericalError
from deepseek_rl.infra.checkpoint import TrainerState, export_hf, save_checkpoint
from deepseek_rl.infra.distributed import (
    any_rank,
    broadcast_value,
    launched_world_size,
    make_accelerator,
    prepare_reference,
    write_rank_report,
)
from deepseek_rl.infra.optim import build_optimizer, lr_schedule
from deepseek_rl.infra.preemption import Preempted, Preemption
from deepseek_rl.infra.resume import resume_stage
from deepseek_rl.infra.tracking import RunTracker
from deepseek_rl.models.loading import eos_token_ids, load_model, load_tokenizer
from deepseek_rl.models.lora import AdapterDisabledReference
from deepseek_rl.preflight.check import preflight_before_training
from deepseek_rl.rewards import check_reward_columns
from deepseek_rl.rollout.engine import BuiltinEngine, RolloutEngine
from deepseek_rl.rollout.tools import with_tools
from deepseek_rl.stages.alarms import RewardFailureGuard
from deepseek_rl.stages.collect import RolloutCollector
from deepseek_rl.stages.evaluate import HeldOutEval, shard_of
from deepseek_rl.stages.metrics import rollout_metrics, update_metrics
from deepseek_rl.stages.observability import RolloutObserver

# Rewards given from Python: name -> reward(completions, **columns) -> list[float | None].
RewardFunctions = Mapping[str, Callable[..., list]]


@dataclass
class StepStats:
    """What one step measured, reduced over ranks: the headline numbers and every metric for the tracker."""

    step: int  # training steps completed
    reward: float  # mean total reward of the step's completions
    loss: float
    metrics: dict[str, float] = field(default_factory=dict)  # all of them, for metrics.jsonl and wandb


@dataclass
class GRPORun:
    """Everything the loop needs, built once by `setup`."""

    cfg: Config
    plan: BatchPlan
    output_dir: Path
    accelerator: Accelerator
    policy: torch.nn.Module
    reference: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    engine: RolloutEngine
    collector: RolloutCollector
    rewards: RewardSet
    update: UpdateSettings
    tracker: RunTracker
    observer: RolloutObserver
    evaluator: HeldOutEval | None
    state: TrainerState
    preemption: Preemption
    reward_guard: RewardFailureGuard


def setup(cfg: Config, output_dir: Path, reward_funcs: RewardFunctions | None = None) -> GRPORun:
    """Build the run (config errors surface here before any model loads) and restore a checkpoint if resuming.
    `reward_funcs` adds rewards given as Python callables (name -> callable), as TRL's `reward_funcs`."""
    plan = cfg.grpo_plan(launched_world_size())
    preflight_before_training(cfg)  # memory and precision, before any weights load (deepseek-rl check)
    accelerator = make_accelerator(plan, cfg.optimizer.max_grad_norm)
    if cfg.trainer.max_tokens_per_micro_batch is not None and accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ConfigError(
            "trainer.max_tokens_per_micro_batch: DeepSpeed fixes its gradient accumulation steps at start, so "
            "micro-batches cannot vary per step; use trainer.micro_batch_size (with trainer.padding_free=true), or "
            "DDP / FSDP2"
        )
    output_dir = Path(broadcast_value(accelerator, str(output_dir)))

    tokenizer = load_tokenizer(cfg.model)
    prompts = build_prompt_set(cfg.data, tokenizer, cfg.rollout.max_prompt_length)
    context = {"max_completion_length": cfg.rollout.max_completion_length}
    functions = {**cfg.reward.functions, **(reward_funcs or {})}
    check_reward_columns(cfg.reward, list(prompts.columns), source_name(cfg.data), tuple(context), functions)
    held_out = None
    if cfg.eval.every:
        held_out = build_prompt_set(cfg.data, tokenizer, cfg.rollout.max_prompt_length, split="eval")
        check_reward_columns(cfg.reward.subset([cfg.eval.correctness]), list(held_out.columns),
                             source_name(cfg.data, "eval"), functions=functions)  # fmt: skip
    rewards = RewardSet(
        cfg.reward, context, functions=reward_funcs, device=accelerator.device, report=accelerator.is_main_process
    )
    set_seed(cfg.trainer.seed)
    policy = load_model(cfg.model, tokenizer, seed=cfg.trainer.seed, trainable=True)
    # a second copy from the same weights (deepcopy would not work on a ZeRO-3 partitioned model); for a LoRA
    # policy, the policy itself with its adapters disabled
    reference = None
    with_reference = cfg.algorithm.kl_coef > 0 or cfg.algorithm.log_kl
    if with_reference and cfg.model.lora.enabled:
        reference = AdapterDisabledReference(policy)
    elif with_reference:
        reference = prepare_reference(accelerator, load_model(cfg.model, tokenizer, seed=cfg.trainer.seed))
    eos_ids = eos_token_ids(tokenizer, policy)
    optimizer = build_optimizer(policy, cfg.algorithm.lr, cfg.optimizer)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    passes = plan.passes  # the schedule counts optimizer steps: num_iterations per training step
    scheduler = lr_schedule(optimizer, cfg.optimizer, plan.optimizer_steps, cfg.optimizer.warmup_steps * passes)
    accelerator.register_for_checkpointing(scheduler)

    config, trainer = asdict(cfg), cfg.trainer  # a resume checks the checkpoint and its config (infra/resume.py)
    state = resume_stage(
        accelerator, trainer.resume, trainer.resume_override, output_dir, config, "grpo", optimizer, scheduler
    )
    state = state or TrainerState(step=0)
    tracker = RunTracker(cfg.logger, output_dir, config, accelerator.is_main_process, state)
    engine = make_engine(cfg, policy, tokenizer, eos_ids, accelerator, output_dir)
    collector = RolloutCollector(
        plan=plan,
        rank=accelerator.process_index,
        seed=cfg.trainer.seed,
        rollout=cfg.rollout,
        algorithm=cfg.algorithm,
        prompts=prompts,
        rewards=rewards,
        pad_id=tokenizer.pad_token_id,
        gather=lambda t: accelerator.gather(t.to(accelerator.device)).cpu(),
    )
    evaluator = None
    if held_out is not None:
        settings = cfg.eval.during_training()
        evaluator = HeldOutEval(
            held_out.subset(settings.num_prompts), settings, cfg.rollout, cfg.trainer.seed, cfg.reward
        )
    return GRPORun(
        cfg=cfg,
        plan=plan,
        output_dir=output_dir,
        accelerator=accelerator,
        policy=policy,
        reference=reference,
        optimizer=optimizer,
        scheduler=scheduler,
        engine=engine,
        collector=collector,
        rewards=rewards,
        update=UpdateSettings(
            cfg.algorithm,
            plan,
            cfg.rollout.temperature,
            cfg.rollout.max_completion_length,
            cfg.optimizer.max_grad_norm,
            cfg.trainer.padding_free,
            cfg.trainer.max_tokens_per_micro_batch,
        ),
        tracker=tracker,
        observer=RolloutObserver(cfg.logger, cfg.eval, cfg.data.source_column, rewards.names, tracker),
        evaluator=evaluator,
        state=state,
        preemption=Preemption(),
        reward_guard=RewardFailureGuard(rewards.names, cfg.reward.max_error_rate, cfg.reward.max_error_steps),
    )


def make_engine(cfg: Config, policy, tokenizer, eos_ids: list[int], accelerator: Accelerator, run_dir: Path):
    """The rollout engine of `rollout.engine` (vLLM is imported only when selected)."""
    if cfg.rollout.engine == "builtin":
        engine = BuiltinEngine(policy, tokenizer, eos_ids, accelerator)
    else:
        from deepseek_rl.rollout.vllm_engine import VLLMEngine, engine_model_dir

        model_dir = engine_model_dir(cfg.model, accelerator.unwrap_model(policy), tokenizer, run_dir)
        seed = cfg.trainer.seed
        engine = VLLMEngine(model_dir, cfg.model, cfg.rollout, policy, tokenizer, eos_ids, accelerator, seed)
    return with_tools(engine, cfg.rollout, eos_ids, cfg.reward.sandbox)  # tool calls isolated as reward.sandbox says


def held_out_metrics(run: GRPORun) -> dict[str, float]:
    if run.evaluator is None:
        return {}
    return run.evaluator(run.engine, shard_of(run.accelerator))


def step(run: GRPORun, step_index: int) -> StepStats:
    """One GRPO step: rollouts -> advantages -> log-probs -> update; statistics reduced over ranks."""
    accelerator, start = run.accelerator, time.perf_counter()
    with run.engine.session():
        scored, sampling = run.collector.collect(run.engine, step_index)
    collected = time.perf_counter()
    inputs = build_loss_inputs(scored, run.cfg.algorithm.mask_truncated)
    inputs = add_old_and_ref_logprobs(run.policy, run.reference, inputs, run.update, accelerator)
    logprobs_done = time.perf_counter()
    try:
        sums = update_policy(accelerator, run.policy, run.optimizer, run.scheduler, inputs, run.update)
    except NumericalError as err:
        raise NumericalError(f"grpo step {step_index + 1}: {err}") from None
    run.engine.policy_updated()
    run.state.step = step_index + 1
    generation_time = max(sampling["time/generation"], 1e-9)
    updated = update_metrics(accelerator, sums, run.cfg.algorithm.loss_type)
    seconds = time.perf_counter() - start
    run.state.train_seconds += seconds
    run.state.train_tokens += updated["tokens"]
    metrics = {
        **rollout_metrics(accelerator, scored, run.rewards),
        **updated,
        **sampling,
        "lr": run.scheduler.get_last_lr()[0],
        "time/logprobs": logprobs_done - collected,
        "time/update": time.perf_counter() - logprobs_done,
        "time/step": seconds,
        "train/seconds": run.state.train_seconds,
        "train/tokens": run.state.train_tokens,
        "tokens_per_second": float(scored.rollout.completion_mask.sum()) / generation_time,
        **engine_metrics(run.engine),
        **run.observer.metrics(accelerator, scored),
    }
    every, done = run.cfg.eval.every, run.state.step
    if every and (done % every == 0 or done == run.plan.max_steps):
        metrics |= held_out_metrics(run)
    metrics |= run.observer.alarms(done, metrics)
    run.reward_guard.check(done, metrics, run.rewards.first_errors, accelerator.is_main_process)
    run.observer.log_table(done, scored)
    return StepStats(step=done, reward=metrics["reward"], loss=metrics["loss"], metrics=metrics)


def engine_metrics(engine: RolloutEngine) -> dict[str, float]:
    seconds = engine.pop_sync_seconds()
    return {} if seconds is None else {"time/weight_sync": seconds}


def finish(run: GRPORun) -> Path:
    """After the last step: rank reports, the HF export, summary.json; returns the run directory."""
    accelerator = run.accelerator
    write_rank_report(accelerator, run.policy, run.output_dir / "rank_reports")
    if run.cfg.trainer.save_final:
        export_hf(accelerator, run.policy, run.engine.tokenizer, run.output_dir / "final")
    run.tracker.finish(summary=True)
    close(run)
    return run.output_dir


def close(run: GRPORun) -> None:
    """Release the workers, the engine and the signal handler (also after a failure or preemption)."""
    run.rewards.close()
    run.engine.close()
    run.preemption.close()


def train(cfg: Config, output_dir: Path, reward_funcs: RewardFunctions | None = None) -> Path:
    """Run GRPO as configured; returns the run directory. Raises `Preempted` after a SIGTERM (checkpoint saved)."""
    run = setup(cfg, output_dir, reward_funcs)
    try:
        if run.evaluator is not None and run.state.step == 0:
            run.tracker.log(0, held_out_metrics(run))
        main = run.accelerator.is_main_process
        progress = tqdm(
            range(run.state.step, run.plan.max_steps),
            desc="grpo",
            initial=run.state.step,
            total=run.plan.max_steps,
            disable=not main,
            dynamic_ncols=True,
        )
        for index in progress:
            stats = step(run, index)
            run.tracker.log(stats.step, stats.metrics)
            progress.set_postfix(reward=f"{stats.reward:.3f}", loss=f"{stats.loss:.4f}")
            preempted = any_rank(run.accelerator, run.preemption.requested)
            every = run.cfg.trainer.save_every
            if preempted or (every and stats.step % every == 0):
                save_checkpoint(
                    run.accelerator, run.output_dir, run.state, run.cfg.trainer.keep_last, run.tracker.run_config
                )
            if preempted:
                run.tracker.finish()
                raise Preempted("grpo", stats.step)
    except BaseException:
        close(run)
        raise
    return finish(run)
