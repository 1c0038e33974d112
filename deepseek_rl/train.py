"""GRPO training: the Hydra entry point and the one training loop.

    deepseek-rl train --config-name smoke trainer.max_steps=10
    accelerate launch --config_file launch/zero2.yaml -m deepseek_rl.train --config-name smoke

Each step, on every rank: sample G completions for each of this rank's prompts (groups stay on the rank) and
score them -> group-relative advantages -> old / reference log-probs if the algorithm needs them -> micro-batched
clipped-surrogate update -> metrics reduced across ranks, logged by rank 0 -> a checkpoint every N steps.
SIGTERM (preemption) finishes the current step, writes a checkpoint and exits; `trainer.resume=auto` continues.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import hydra
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from deepseek_rl.checkpoint import TrainerState, export_hf, find_resume_checkpoint, load_checkpoint, save_checkpoint
from deepseek_rl.collect import RolloutCollector
from deepseek_rl.config import Config, ConfigError, OptimizerConfig
from deepseek_rl.data import DataError, build_prompt_set
from deepseek_rl.distributed import (
    LaunchError,
    any_rank,
    broadcast_value,
    generation_model,
    launched_world_size,
    make_accelerator,
    prepare_reference,
    release_accelerator,
    write_rank_report,
)
from deepseek_rl.evaluate import evaluate
from deepseek_rl.lora import AdapterDisabledReference, trainable_parameters
from deepseek_rl.metrics import rollout_metrics, update_metrics
from deepseek_rl.models import eos_token_ids, load_model, load_tokenizer
from deepseek_rl.observability import RolloutObserver
from deepseek_rl.paths import recipes_dir
from deepseek_rl.preflight import preflight_before_training
from deepseek_rl.rollout import Sampler
from deepseek_rl.scoring import RewardSet
from deepseek_rl.sweep import current_job, job_logger
from deepseek_rl.tracking import RunTracker
from deepseek_rl.update import add_old_and_ref_logprobs, build_loss_inputs, update_policy


def lr_schedule(
    optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, max_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then constant, linear or cosine decay to 0 at max_steps."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        progress = (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps)
        if cfg.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class HeldOutEval:
    """Evaluation on the held-out split during training (rank 0 samples; the others wait)."""

    def __init__(self, cfg: Config, tokenizer, eos_ids: list[int]):
        self.cfg, self.tokenizer, self.eos_ids = cfg, tokenizer, eos_ids
        self.settings = cfg.eval.during_training()
        prompts = build_prompt_set(cfg.data, tokenizer, cfg.rollout.max_prompt_length, split="eval")
        self.prompts = prompts.subset(self.settings.num_prompts)

    def __call__(self, accelerator: Accelerator, policy: torch.nn.Module) -> dict[str, float]:
        metrics: dict[str, float] = {}
        with generation_model(accelerator, policy) as model:
            if accelerator.is_main_process:
                sampler = Sampler(model, self.tokenizer, self.eos_ids, self.cfg.eval.batch_size)
                report = evaluate(
                    sampler, self.prompts, self.settings, self.cfg.rollout, self.cfg.trainer.seed, self.cfg.reward.args
                )
                metrics = report.metrics
        accelerator.wait_for_everyone()
        return metrics


class Preemption:
    """Remembers a SIGTERM so the loop can checkpoint at the end of the step instead of dying mid-update."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True


def train(cfg: Config, output_dir: Path) -> Path:
    """Run GRPO as configured; returns the run directory. Config errors surface before any model is loaded."""
    cfg.check_batch(launched_world_size())
    preflight_before_training(cfg)  # memory and precision, before any weights load (deepseek-rl check)
    accelerator: Accelerator = make_accelerator(cfg.trainer, cfg.optimizer.max_grad_norm)
    output_dir = Path(broadcast_value(accelerator, str(output_dir)))
    preemption = Preemption()

    tokenizer = load_tokenizer(cfg.model)
    prompt_set = build_prompt_set(cfg.data, tokenizer, cfg.rollout.max_prompt_length)
    rewards = RewardSet(cfg.reward, context={"max_completion_length": cfg.rollout.max_completion_length})
    set_seed(cfg.trainer.seed)
    policy = load_model(cfg.model, tokenizer, seed=cfg.trainer.seed, trainable=True)
    # a second copy from the same weights (deepcopy would not work on a ZeRO-3 partitioned model); for a LoRA
    # policy, the policy itself with its adapters disabled
    reference = None
    if cfg.algorithm.kl_coef > 0 and cfg.model.lora.enabled:
        reference = AdapterDisabledReference(policy)
    elif cfg.algorithm.kl_coef > 0:
        reference = prepare_reference(accelerator, load_model(cfg.model, tokenizer, seed=cfg.trainer.seed))
    eos_ids = eos_token_ids(tokenizer, policy)
    rank, world = accelerator.process_index, accelerator.num_processes
    collector = RolloutCollector(cfg, tokenizer, prompt_set, rewards, eos_ids, rank, world)
    optimizer = torch.optim.AdamW(
        trainable_parameters(policy),
        lr=cfg.algorithm.lr,
        betas=tuple(cfg.optimizer.betas),
        eps=cfg.optimizer.eps,
        weight_decay=cfg.optimizer.weight_decay,
        fused=True,  # one kernel over all parameters (CPU and CUDA); 6x faster than the per-tensor loop on CPU
    )
    policy, optimizer = accelerator.prepare(policy, optimizer)
    scheduler = lr_schedule(optimizer, cfg.optimizer, cfg.trainer.max_steps)
    accelerator.register_for_checkpointing(scheduler)

    state = TrainerState(step=0)
    resume_from = find_resume_checkpoint(cfg.trainer.resume, output_dir)
    if resume_from is not None:
        state = load_checkpoint(accelerator, resume_from)
    tracker = RunTracker(cfg.logger, output_dir, asdict(cfg), accelerator.is_main_process, state)
    observer = RolloutObserver(cfg, rewards.names, tracker)
    evaluator = HeldOutEval(cfg, tokenizer, eos_ids) if cfg.eval.every else None
    if evaluator is not None and state.step == 0:
        tracker.log(0, evaluator(accelerator, policy))

    progress = tqdm(
        range(state.step, cfg.trainer.max_steps),
        desc="grpo",
        initial=state.step,
        total=cfg.trainer.max_steps,
        disable=not accelerator.is_main_process,
        dynamic_ncols=True,
    )
    for step in progress:
        start = time.perf_counter()
        with generation_model(accelerator, policy) as sampler:
            scored, sampling = collector.collect(sampler, step)
        collected = time.perf_counter()
        inputs = add_old_and_ref_logprobs(
            policy, reference, build_loss_inputs(scored, cfg.algorithm.mask_truncated), cfg
        )
        logprobs_done = time.perf_counter()
        sums = update_policy(accelerator, policy, optimizer, scheduler, inputs, cfg)
        state.step = step + 1
        metrics = {
            **rollout_metrics(accelerator, scored, rewards),
            **update_metrics(accelerator, sums, cfg.algorithm.loss_type),
            **sampling,
            "lr": scheduler.get_last_lr()[0],
            "time/logprobs": logprobs_done - collected,
            "time/update": time.perf_counter() - logprobs_done,
            "time/step": time.perf_counter() - start,
            "tokens_per_second": float(scored.rollout.completion_mask.sum()) / max(sampling["time/generation"], 1e-9),
            **observer.metrics(accelerator, scored),
        }
        if evaluator is not None and (state.step % cfg.eval.every == 0 or state.step == cfg.trainer.max_steps):
            metrics |= evaluator(accelerator, policy)
        metrics |= observer.alarms(state.step, metrics)
        tracker.log(state.step, metrics)
        observer.log_table(state.step, scored)
        progress.set_postfix(reward=f"{metrics['reward']:.3f}", loss=f"{metrics['loss']:.4f}")

        stop = any_rank(accelerator, preemption.requested)
        if stop or (cfg.trainer.save_every and state.step % cfg.trainer.save_every == 0):
            save_checkpoint(accelerator, output_dir, state, cfg.trainer.keep_last)
        if stop:
            accelerator.print(
                f"deepseek-rl: preempted after step {state.step}; checkpoint saved, resume with trainer.resume=auto"
            )
            tracker.finish()
            rewards.close()
            return output_dir

    write_rank_report(accelerator, policy, output_dir / "rank_reports")
    if cfg.trainer.save_final:
        export_hf(accelerator, policy, tokenizer, output_dir / "final")
    tracker.finish(summary=True)
    rewards.close()
    accelerator.end_training()
    return output_dir


def run(dcfg: DictConfig) -> Path:
    """Validate the composed recipe and run its stages (GRPO alone by default)."""
    from deepseek_rl.pipeline import run_stages

    try:
        cfg: Config = OmegaConf.to_object(dcfg)
        cfg.logger = job_logger(cfg.logger, current_job())  # a multirun job logs to its sweep's wandb group
        output_dir = Path(cfg.trainer.output_dir or HydraConfig.get().runtime.output_dir)
        run_stages(cfg, output_dir)
        return output_dir
    except (ConfigError, DataError, LaunchError) as err:
        print(f"deepseek-rl: configuration error: {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        release_accelerator()  # the next job of a multirun (same process) starts from a clean accelerate state


@hydra.main(config_path=str(recipes_dir()), config_name="default", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    run(dcfg)


if __name__ == "__main__":
    main()
