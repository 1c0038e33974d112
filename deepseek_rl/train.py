"""GRPO training: the Hydra entry point and the one training loop.

    deepseek-rl train --config-name smoke trainer.max_steps=10
    accelerate launch -m deepseek_rl.train --config-name smoke

Each step, on every rank: take this rank's B prompts -> sample G completions each (groups stay on the rank) ->
score them with the rule-based rewards -> group-relative advantages -> (old / reference log-probs if needed) ->
micro-batched clipped-surrogate update -> metrics reduced across ranks, logged by rank 0.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path

import hydra
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from deepseek_rl.batch import ScoredBatch
from deepseek_rl.checkpoint import export_hf
from deepseek_rl.config import Config, ConfigError, OptimizerConfig
from deepseek_rl.data import DataError, build_prompt_set, rank_indices, step_indices
from deepseek_rl.distributed import broadcast_value, launched_world_size, make_accelerator
from deepseek_rl.grpo import group_advantages
from deepseek_rl.metrics import rollout_metrics, update_metrics
from deepseek_rl.models import eos_token_ids, load_model, load_tokenizer
from deepseek_rl.paths import recipes_dir
from deepseek_rl.rollout import RowUniforms, generate_rollouts
from deepseek_rl.scoring import RewardSet
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


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def score_rollouts(rollout, rewards: RewardSet, cfg: Config) -> ScoredBatch:
    columns = {**rollout.columns, "prompts": rollout.prompts, "completion_ids": rollout.completion_ids.tolist()}
    terms = rewards.score(rollout.completions, columns)  # [N, F]
    total = rewards.total(terms)  # [N]
    advantages = group_advantages(total, rollout.group_size, cfg.algorithm.scale_rewards, cfg.algorithm.adv_eps)
    return ScoredBatch(
        rollout=rollout, reward_names=rewards.names, reward_terms=terms, rewards=total, advantages=advantages
    )


def sampling_seed(cfg: Config, step: int) -> int:
    return cfg.trainer.seed * 1_000_003 + step


def train(cfg: Config, output_dir: Path) -> Path:
    """Run GRPO as configured; returns the run directory. Config errors surface before any model is loaded."""
    world = launched_world_size()
    cfg.check_batch(world)
    prompts_per_step = cfg.trainer.batch_size // cfg.algorithm.num_generations
    completions_per_rank = cfg.trainer.batch_size // world
    accelerator: Accelerator = make_accelerator(completions_per_rank // cfg.trainer.micro_batch_size)
    output_dir = Path(broadcast_value(accelerator, str(output_dir)))
    set_seed(cfg.trainer.seed)

    tokenizer = load_tokenizer(cfg.model)
    prompt_set = build_prompt_set(cfg.data, tokenizer, cfg.rollout.max_prompt_length)
    rewards = RewardSet(cfg.reward)
    policy = load_model(cfg.model, tokenizer)
    eos_ids = eos_token_ids(tokenizer, policy)
    reference = frozen_copy(policy).to(accelerator.device) if cfg.algorithm.kl_coef > 0 else None
    optimizer = torch.optim.AdamW(
        policy.parameters(),
        lr=cfg.algorithm.lr,
        betas=tuple(cfg.optimizer.betas),
        eps=cfg.optimizer.eps,
        weight_decay=cfg.optimizer.weight_decay,
    )
    policy, optimizer = accelerator.prepare(policy, optimizer)
    scheduler = lr_schedule(optimizer, cfg.optimizer, cfg.trainer.max_steps)
    tracker = RunTracker(
        cfg.logger, output_dir, OmegaConf.to_container(OmegaConf.structured(cfg)), accelerator.is_main_process
    )

    progress = tqdm(
        range(cfg.trainer.max_steps), desc="grpo", disable=not accelerator.is_main_process, dynamic_ncols=True
    )
    for step in progress:
        t0 = time.perf_counter()
        indices = rank_indices(
            step_indices(len(prompt_set), prompts_per_step, step, cfg.trainer.seed),
            accelerator.process_index,
            world,
        )
        prompts = prompt_set.batch(indices, tokenizer.pad_token_id)
        uniforms = RowUniforms(
            sampling_seed(cfg, step),
            cfg.trainer.batch_size,
            accelerator.process_index * completions_per_rank,
            completions_per_rank,
        )
        rollout = generate_rollouts(
            accelerator.unwrap_model(policy),
            tokenizer,
            prompts,
            cfg.rollout,
            cfg.algorithm.num_generations,
            eos_ids,
            uniforms,
        )
        t1 = time.perf_counter()
        scored = score_rollouts(rollout, rewards, cfg)
        t2 = time.perf_counter()
        inputs = add_old_and_ref_logprobs(
            policy, reference, build_loss_inputs(scored, cfg.algorithm.mask_truncated), cfg
        )
        t3 = time.perf_counter()
        sums = update_policy(accelerator, policy, optimizer, scheduler, inputs, cfg)
        t4 = time.perf_counter()

        metrics = {
            **rollout_metrics(accelerator, scored, rewards),
            **update_metrics(accelerator, sums, cfg.algorithm.loss_type),
            "lr": scheduler.get_last_lr()[0],
            "time/generation": t1 - t0,
            "time/reward": t2 - t1,
            "time/logprobs": t3 - t2,
            "time/update": t4 - t3,
            "time/step": t4 - t0,
            "tokens_per_second": float(rollout.completion_mask.sum()) * world / max(t1 - t0, 1e-9),
        }
        tracker.log(step + 1, metrics)
        progress.set_postfix(reward=f"{metrics['reward']:.3f}", loss=f"{metrics['loss']:.4f}")

    if cfg.trainer.save_final:
        export_hf(accelerator, policy, tokenizer, output_dir / "final")
    tracker.finish()
    accelerator.end_training()
    return output_dir


def to_config(dcfg: DictConfig) -> Config:
    """The typed config of a composed recipe (raises ConfigError naming the key)."""
    return OmegaConf.to_object(dcfg)


def run(dcfg: DictConfig) -> Path:
    try:
        cfg = to_config(dcfg)
        output_dir = Path(cfg.trainer.output_dir or HydraConfig.get().runtime.output_dir)
        return train(cfg, output_dir)
    except (ConfigError, DataError) as err:
        print(f"deepseek-rl: configuration error: {err}", file=sys.stderr)
        sys.exit(2)


@hydra.main(config_path=str(recipes_dir()), config_name="default", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    run(dcfg)


if __name__ == "__main__":
    main()
