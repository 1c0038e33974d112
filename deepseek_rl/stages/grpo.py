"""The GRPO stage: one explicit loop in three phases, setup -> step -> finish, on the stage scaffold (stages/run.py).

    deepseek-rl train --config-name smoke trainer.max_steps=10
    accelerate launch --config_file launch/zero2.yaml -m deepseek_rl.train --config-name smoke

setup    what every stage has (the scaffold's `Stage`: accelerator, policy, optimizer, schedule, tracker, engine,
         checkpoint) and what is GRPO's own, in one `GRPORun`: a frozen reference only when kl_coef > 0 or log_kl,
         the reward set, the collector, the observer, the held-out evaluator; data and rewards are checked before any
         weights load.
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
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from deepseek_rl.algo.update import UpdateSettings, add_old_and_ref_logprobs, build_loss_inputs, update_policy
from deepseek_rl.config.schema import Config
from deepseek_rl.data.prompts import PromptSet, build_prompt_set
from deepseek_rl.data.sources import source_name
from deepseek_rl.errors import ConfigError, NumericalError
from deepseek_rl.infra.distributed import autocast_precision, launched_world_size, prepare_reference
from deepseek_rl.models.loading import load_model
from deepseek_rl.models.lora import AdapterDisabledReference
from deepseek_rl.preflight.check import preflight_before_training
from deepseek_rl.rewards import check_reward_columns
from deepseek_rl.rollout.engine import RolloutEngine
from deepseek_rl.stages.alarms import RewardFailureGuard
from deepseek_rl.stages.async_rollouts import AsyncRollouts, PendingRollouts
from deepseek_rl.stages.collect import RolloutCollector
from deepseek_rl.stages.evaluate import HeldOutEval, shard_of
from deepseek_rl.stages.metrics import step_metrics
from deepseek_rl.stages.observability import RolloutObserver
from deepseek_rl.stages.reward_set import RewardSet
from deepseek_rl.stages.run import Stage, close_stage, exports, open_stage, release, run_steps

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
    """The stage (what every stage has) and what is GRPO's own, built once by `setup`."""

    stage: Stage
    reference: torch.nn.Module | None
    collector: RolloutCollector
    rewards: RewardSet
    settings: UpdateSettings  # the update's settings, fixed for the run
    observer: RolloutObserver
    evaluator: HeldOutEval | None
    reward_guard: RewardFailureGuard
    remote: AsyncRollouts | None = None  # asynchronous rollouts (rollout.max_staleness > 0)

    # the scaffold's parts under their usual names
    cfg = property(lambda self: self.stage.cfg)
    plan = property(lambda self: self.stage.plan)
    accelerator = property(lambda self: self.stage.accelerator)
    policy = property(lambda self: self.stage.policy)
    optimizer = property(lambda self: self.stage.optimizer)
    scheduler = property(lambda self: self.stage.scheduler)
    engine = property(lambda self: self.stage.engine)
    state = property(lambda self: self.stage.state)
    tracker = property(lambda self: self.stage.tracker)
    output_dir = property(lambda self: self.stage.output_dir)


@dataclass
class Checked:
    """What GRPO checks before any weights load: the prompt sets and the reward set."""

    prompts: PromptSet
    held_out: PromptSet | None
    rewards: RewardSet
    pending: PendingRollouts | None  # asynchronous rollouts' batches in a checkpoint


def setup(cfg: Config, output_dir: Path, reward_funcs: RewardFunctions | None = None) -> GRPORun:
    """Build the run (config errors surface here before any model loads) and restore a checkpoint if resuming.
    `reward_funcs` adds rewards given as Python callables (name -> callable), as TRL's `reward_funcs`."""
    plan = cfg.grpo_plan(launched_world_size())
    preflight_before_training(cfg)  # memory and precision, before any weights load (deepseek-rl check)

    def before_model(accelerator: Accelerator, tokenizer) -> Checked:
        deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
        if cfg.trainer.max_tokens_per_micro_batch is not None and deepspeed:
            raise ConfigError(
                "trainer.max_tokens_per_micro_batch: DeepSpeed fixes its gradient accumulation steps at start, so "
                "micro-batches cannot vary per step; use trainer.micro_batch_size (with trainer.padding_free=true), "
                "or DDP / FSDP2"
            )
        prompts = build_prompt_set(cfg.data, tokenizer, cfg.rollout.max_prompt_length)
        context = {"max_completion_length": cfg.rollout.max_completion_length}
        functions = {**cfg.reward.functions, **(reward_funcs or {})}
        check_reward_columns(cfg.reward, list(prompts.columns), source_name(cfg.data), tuple(context), functions)
        held_out = None
        if cfg.eval.every:
            held_out = build_prompt_set(cfg.data, tokenizer, cfg.rollout.max_prompt_length, split="eval")
            check_reward_columns(cfg.reward.subset([cfg.eval.correctness]), list(held_out.columns),
                                 source_name(cfg.data, "eval"), functions=functions)  # fmt: skip
        pending = None
        if cfg.rollout.max_staleness > 0:
            if reward_funcs:
                raise ConfigError(
                    "rollout.max_staleness > 0 scores rewards in the rollout worker, which rewards given from Python "
                    f"({', '.join(reward_funcs)}) cannot reach: name them in the recipe "
                    "(+reward.functions.NAME=file.py:function), or train synchronously (rollout.max_staleness=0)"
                )
            if cfg.algorithm.tis_cap is None and accelerator.is_main_process:
                print(f"deepseek-rl: warning: rollout.max_staleness={cfg.rollout.max_staleness} samples with older "
                      "policies and algorithm.tis_cap=null corrects nothing for it; algorithm.tis_cap=2 weighs each "
                      "token by min(pi_proximal / pi_behaviour, 2) (docs/async.md)", flush=True)  # fmt: skip
            pending = PendingRollouts()
            accelerator.register_for_checkpointing(pending)  # restored by the resume that follows
        rewards = RewardSet(cfg.reward, context, functions=reward_funcs, device=accelerator.device,
                            report=accelerator.is_main_process)  # fmt: skip
        return Checked(prompts, held_out, rewards, pending)

    # asynchronous rollouts: the worker holds the rollout engine (vLLM too); the trainer's own engine, for held-out
    # evaluations only, is the built-in sampler on the policy, so a vLLM engine takes no memory beside the trainer
    engine = "builtin" if cfg.rollout.max_staleness > 0 else "rollout"
    stage, checked = open_stage(
        cfg, "grpo", plan, output_dir, cfg.algorithm.lr, cfg.optimizer.warmup_steps, before_model, engine=engine
    )
    try:
        return grpo_parts(stage, checked)
    except BaseException:
        checked.rewards.close()
        release(stage)
        raise


def grpo_parts(stage: Stage, checked: Checked) -> GRPORun:
    """What GRPO adds to the stage: the reference model, the collector, the observer, the held-out evaluator."""
    cfg, accelerator = stage.cfg, stage.accelerator
    # a second copy from the same weights (deepcopy would not work on a ZeRO-3 partitioned model); for a LoRA
    # policy, the policy itself with its adapters disabled
    reference = None
    if cfg.algorithm.kl_coef > 0 or cfg.algorithm.log_kl:
        if cfg.model.lora.enabled:
            reference = AdapterDisabledReference(accelerator.unwrap_model(stage.policy))
        else:
            reference = prepare_reference(accelerator, load_model(cfg.model, stage.tokenizer, seed=cfg.trainer.seed))
    rewards = checked.rewards
    collector = RolloutCollector(
        plan=stage.plan,
        rank=accelerator.process_index,
        seed=cfg.trainer.seed,
        rollout=cfg.rollout,
        algorithm=cfg.algorithm,
        prompts=checked.prompts,
        rewards=rewards,
        pad_id=stage.tokenizer.pad_token_id,
        gather=lambda t: accelerator.gather(t.to(accelerator.device)).cpu(),
    )
    evaluator = None
    if checked.held_out is not None:
        settings = cfg.eval.during_training()
        evaluator = HeldOutEval(
            checked.held_out.subset(settings.num_prompts), settings, cfg.rollout, cfg.trainer.seed, cfg.reward
        )
    trainer = cfg.trainer
    remote = None
    if checked.pending is not None:
        remote = AsyncRollouts(cfg, stage.output_dir, stage.state, checked.pending.resumed, accelerator.process_index,
                               accelerator.num_processes, stage.rank_zero_value,
                               precision=autocast_precision(accelerator))  # fmt: skip
        checked.pending.source = remote
        try:
            remote.begin(accelerator.unwrap_model(stage.policy))
        except BaseException:
            remote.close()
            raise
    return GRPORun(
        stage=stage,
        reference=reference,
        collector=collector,
        rewards=rewards,
        settings=UpdateSettings(
            cfg.algorithm,
            stage.plan,
            cfg.rollout.temperature,
            cfg.rollout.max_completion_length,
            cfg.optimizer.max_grad_norm,
            trainer.padding_free,
            trainer.max_tokens_per_micro_batch,
        ),
        observer=RolloutObserver(cfg.logger, cfg.eval, cfg.data.source_column, rewards.names, stage.tracker),
        evaluator=evaluator,
        reward_guard=RewardFailureGuard(rewards.names, cfg.reward.max_error_rate, cfg.reward.max_error_steps),
        remote=remote,
    )


def held_out_metrics(run: GRPORun) -> dict[str, float]:
    if run.evaluator is None:
        return {}
    return run.evaluator(run.engine, shard_of(run.accelerator))


def step(run: GRPORun, step_index: int) -> StepStats:
    """One GRPO step: rollouts -> advantages -> log-probs -> update; statistics reduced over ranks, once."""
    accelerator, start = run.accelerator, time.perf_counter()
    versions = {}
    if run.remote is not None:  # sampled ahead by the rollout worker, with the policy of step - k or later
        scored, rollout_stats, sampled = run.remote.take(step_index)
        staleness = float(step_index - sampled.version)
        versions = {"rollout/policy_version": float(sampled.version), "rollout/staleness_mean": staleness,
                    "rollout/staleness_max": staleness, "time/wait_rollout": time.perf_counter() - start,
                    "rollout/worker_wait": sampled.waited_seconds}  # fmt: skip
    else:
        with run.engine.session():
            scored, rollout_stats = run.collector.collect(run.engine, step_index)
    collected = time.perf_counter()
    inputs = build_loss_inputs(scored, run.cfg.algorithm.mask_truncated, accelerator.device)
    inputs = add_old_and_ref_logprobs(run.policy, run.reference, inputs, run.settings, accelerator)
    logprobs_done = time.perf_counter()
    try:
        sums = update_policy(accelerator, run.policy, run.optimizer, run.scheduler, inputs, run.settings)
    except NumericalError as err:
        raise NumericalError(f"grpo step {step_index + 1}: {err}") from None
    run.engine.policy_updated()
    if run.remote is not None:
        run.remote.published(step_index + 1, accelerator.unwrap_model(run.policy))
    updated = time.perf_counter()
    cfg = run.cfg
    metrics = step_metrics(accelerator, scored, rollout_stats, sums, run.rewards, cfg.algorithm.loss_type,
                           cfg.eval.correctness, cfg.data.source_column)  # fmt: skip
    run.state.step = step_index + 1
    seconds = time.perf_counter() - start
    run.state.train_seconds += seconds
    run.state.train_tokens += metrics["tokens"]
    metrics |= {
        "lr": run.scheduler.get_last_lr()[0],
        "time/generation": rollout_stats.generation_seconds,
        "time/reward": rollout_stats.reward_seconds,
        "time/logprobs": logprobs_done - collected,
        "time/update": updated - logprobs_done,
        "time/step": seconds,
        "train/seconds": run.state.train_seconds,
        "train/tokens": run.state.train_tokens,
        "tokens_per_second": float(scored.rollout.completion_mask.sum()) / max(rollout_stats.generation_seconds, 1e-9),
        **engine_metrics(run.engine),
        **versions,
    }
    if run.remote is not None:
        sync, waited = run.remote.pop_sync()
        metrics |= sync
        metrics["time/wait_rollout"] += waited
    every, done = cfg.eval.every, run.state.step
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
    """After the last step: rank reports, the HF export (trainer.save_final), summary.json; the run directory."""
    run.rewards.close()
    if run.remote is not None:
        run.remote.close()
    close_stage(run.stage, exports(run.cfg, "grpo"))
    return run.output_dir


def train(cfg: Config, output_dir: Path, reward_funcs: RewardFunctions | None = None) -> Path:
    """Run GRPO as configured; returns the run directory. Raises `Preempted` after a SIGTERM (checkpoint saved)."""
    run = setup(cfg, output_dir, reward_funcs)
    try:
        if run.evaluator is not None and run.state.step == 0:
            run.tracker.log(0, held_out_metrics(run))
        run_steps(
            run.stage,
            lambda index: step(run, index).metrics,
            postfix=lambda m: {"reward": f"{m['reward']:.3f}", "loss": f"{m['loss']:.4f}"},
        )
    except BaseException:
        run.rewards.close()
        if run.remote is not None:
            run.remote.close()
        release(run.stage)
        raise
    return finish(run)
