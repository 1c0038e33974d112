"""TRL's GRPOConfig and verl's names for our keys, so that a key typed the TRL or verl way names ours in the error.

Each entry maps their name to ours (a config key, or what to write instead when there is no single key) and what
differs. docs/coming-from-trl-verl.md is the long form of these tables (a test checks that it covers every entry).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Alias:
    ours: str  # our key (dotted), or a command-line form such as "algorithm=dapo"
    note: str = ""  # what differs, in a few words


TRL: dict[str, Alias] = {
    "learning_rate": Alias("algorithm.lr"),
    "beta": Alias("algorithm.kl_coef", "no importance-ratio bias correction of the KL term"),
    "epsilon": Alias("algorithm.clip_eps_low"),
    "epsilon_high": Alias("algorithm.clip_eps_high", "set it explicitly: it does not default to clip_eps_low"),
    "delta": Alias("algorithm.dual_clip", "a cap for negative advantages, not TRL's two-sided bound"),
    "num_generations": Alias("algorithm.num_generations"),
    "num_iterations": Alias("algorithm.num_iterations"),
    "loss_type": Alias("algorithm.loss_type", "grpo | bnpo | dr_grpo | dapo; cispo, sapo: algorithm.policy_loss"),
    "scale_rewards": Alias("algorithm.scale_rewards"),
    "importance_sampling_level": Alias("algorithm.importance_sampling"),
    "mask_truncated_completions": Alias("algorithm.mask_truncated"),
    "entropy_coef": Alias("algorithm.entropy_coef", "aggregated like the policy loss (loss_type), not a token mean"),
    "vllm_importance_sampling_cap": Alias("algorithm.tis_cap"),
    "vllm_importance_sampling_mode": Alias("algorithm.engine_is_mode", "token_truncate by default"),
    "sapo_temperature_pos": Alias("algorithm.sapo_temperature_pos"),
    "sapo_temperature_neg": Alias("algorithm.sapo_temperature_neg"),
    "vllm_importance_sampling_clip_max": Alias("algorithm.tis_cap"),
    "max_prompt_length": Alias("rollout.max_prompt_length", "an error (or drop with data.drop_long_prompts)"),
    "max_completion_length": Alias("rollout.max_completion_length"),
    "temperature": Alias("rollout.temperature"),
    "top_p": Alias("rollout.top_p"),
    "top_k": Alias("rollout.top_k"),
    "use_vllm": Alias("rollout.engine=vllm"),
    "vllm_gpu_memory_utilization": Alias("rollout.vllm.gpu_memory_utilization"),
    "vllm_tensor_parallel_size": Alias("rollout.vllm.tensor_parallel_size"),
    "vllm_enable_sleep_mode": Alias("rollout.vllm.sleep_level"),
    "reward_weights": Alias("reward.weights", "a dict by reward name (a list in Python's train(), as TRL's)"),
    "reward_funcs": Alias("reward.functions", "name -> file.py:function (Python: train(cfg, reward_funcs=...))"),
    "per_device_train_batch_size": Alias("trainer.micro_batch_size", "completions per forward pass on one rank"),
    "gradient_accumulation_steps": Alias("trainer.batch_size", "derived: batch_size / (micro_batch_size x processes)"),
    "generation_batch_size": Alias("trainer.batch_size", "completions per step across ranks"),
    "max_steps": Alias("trainer.max_steps"),
    "seed": Alias("trainer.seed"),
    "output_dir": Alias("trainer.output_dir"),
    "save_steps": Alias("trainer.save_every"),
    "save_total_limit": Alias("trainer.keep_last"),
    "resume_from_checkpoint": Alias("trainer.resume"),
    "overwrite_output_dir": Alias("trainer.overwrite", "a new run in a used folder stops without it"),
    "warmup_steps": Alias("optimizer.warmup_steps", "counted in training steps"),
    "lr_scheduler_type": Alias("optimizer.schedule", "constant | linear | cosine"),
    "weight_decay": Alias("optimizer.weight_decay"),
    "max_grad_norm": Alias("optimizer.max_grad_norm"),
    "adam_beta1": Alias("optimizer.betas", "a pair [beta1, beta2]"),
    "adam_beta2": Alias("optimizer.betas", "a pair [beta1, beta2]"),
    "adam_epsilon": Alias("optimizer.eps"),
    "gradient_checkpointing": Alias("model.gradient_checkpointing"),
    "bf16": Alias("accelerate launch --mixed_precision bf16", "or model.dtype=bfloat16"),
    "report_to": Alias("logger", "logger=wandb | tensorboard | mlflow | none"),
    "run_name": Alias("logger.name"),
    "log_completions": Alias("logger.rollout_table_every"),
    "num_train_epochs": Alias("trainer.max_steps", "training is counted in steps"),
}

VERL: dict[str, Alias] = {
    "data.train_batch_size": Alias("trainer.batch_size", "ours counts completions: train_batch_size x rollout.n"),
    "data.max_prompt_length": Alias("rollout.max_prompt_length"),
    "data.max_response_length": Alias("rollout.max_completion_length"),
    "data.train_files": Alias("data.path"),
    "data.val_files": Alias("data.eval_path"),
    "data.prompt_key": Alias("data.prompt_column"),
    "actor_rollout_ref.model.path": Alias("model.path"),
    "actor_rollout_ref.model.enable_gradient_checkpointing": Alias("model.gradient_checkpointing"),
    "actor_rollout_ref.model.lora_rank": Alias("model.lora.r"),
    "actor_rollout_ref.model.lora_alpha": Alias("model.lora.alpha"),
    "actor_rollout_ref.actor.optim.lr": Alias("algorithm.lr"),
    "actor_rollout_ref.actor.optim.lr_warmup_steps": Alias("optimizer.warmup_steps"),
    "actor_rollout_ref.actor.optim.weight_decay": Alias("optimizer.weight_decay"),
    "actor_rollout_ref.actor.grad_clip": Alias("optimizer.max_grad_norm"),
    "actor_rollout_ref.actor.ppo_mini_batch_size": Alias(
        "trainer.batch_size", "one optimizer step per rollout batch (num_iterations passes), counted in completions"
    ),
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": Alias("trainer.micro_batch_size"),
    "actor_rollout_ref.actor.ppo_epochs": Alias("algorithm.num_iterations"),
    "actor_rollout_ref.actor.use_kl_loss": Alias("algorithm.kl_coef", "KL is on when kl_coef > 0"),
    "actor_rollout_ref.actor.kl_loss_coef": Alias("algorithm.kl_coef"),
    "actor_rollout_ref.actor.kl_loss_type": Alias("algorithm.kl_estimator", "low_var_kl is k3 (without the clamp)"),
    "actor_rollout_ref.actor.clip_ratio_low": Alias("algorithm.clip_eps_low"),
    "actor_rollout_ref.actor.clip_ratio_high": Alias("algorithm.clip_eps_high"),
    "actor_rollout_ref.actor.clip_ratio_c": Alias("algorithm.dual_clip", "off by default (verl: 3.0)"),
    "actor_rollout_ref.actor.loss_agg_mode": Alias(
        "algorithm.loss_type", "token-mean = dapo, seq-mean-token-mean = grpo, seq-mean-token-sum-norm = dr_grpo"
    ),
    "actor_rollout_ref.actor.entropy_coeff": Alias("algorithm.entropy_coef"),
    "actor_rollout_ref.actor.policy_loss.loss_mode": Alias("algorithm.importance_sampling", "gspo = sequence"),
    "actor_rollout_ref.rollout.n": Alias("algorithm.num_generations"),
    "actor_rollout_ref.rollout.name": Alias("rollout.engine", "builtin | vllm"),
    "actor_rollout_ref.rollout.temperature": Alias("rollout.temperature"),
    "actor_rollout_ref.rollout.top_p": Alias("rollout.top_p"),
    "actor_rollout_ref.rollout.top_k": Alias("rollout.top_k", "0 disables it (verl: -1)"),
    "actor_rollout_ref.rollout.gpu_memory_utilization": Alias("rollout.vllm.gpu_memory_utilization"),
    "actor_rollout_ref.rollout.tensor_model_parallel_size": Alias("rollout.vllm.tensor_parallel_size"),
    "algorithm.adv_estimator": Alias(
        "algorithm.advantage", "grpo | rloo | reinforce_pp (reinforce_plus_plus_baseline); no PPO critic"
    ),
    "algorithm.norm_adv_by_std_in_grpo": Alias("algorithm.scale_rewards", "true = group, false = none"),
    "algorithm.use_kl_in_reward": Alias("algorithm.kl_coef", "KL is a loss term, never a reward term"),
    "custom_reward_function.path": Alias("reward.functions", "name -> file.py:function"),
    "custom_reward_function.name": Alias("reward.functions", "name -> file.py:function"),
    "reward_model.model.path": Alias("reward.models", "name -> model directory"),
    "reward_model.enable": Alias("reward.models"),
    "trainer.total_training_steps": Alias("trainer.max_steps"),
    "trainer.total_epochs": Alias("trainer.max_steps", "training is counted in steps"),
    "trainer.save_freq": Alias("trainer.save_every"),
    "trainer.test_freq": Alias("eval.every"),
    "trainer.logger": Alias("logger", "logger=wandb | tensorboard | mlflow | none"),
    "trainer.project_name": Alias("logger.project"),
    "trainer.experiment_name": Alias("logger.name"),
    "trainer.default_local_dir": Alias("trainer.output_dir"),
    "trainer.n_gpus_per_node": Alias("accelerate launch --num_processes N"),
    "trainer.nnodes": Alias("accelerate launch --num_machines N"),
}


def lookup(key: str) -> tuple[str, Alias] | None:
    """(whose name it is, e.g. "TRL's beta", and ours) for a key typed the TRL or verl way, or None.

    A verl key matches in full; a TRL name matches as the key's last part (`beta`, `algorithm.beta`)."""
    if key in VERL:
        return f"verl's {key}", VERL[key]
    leaf = key.rsplit(".", 1)[-1]
    if leaf in TRL:
        return f"TRL's {leaf}", TRL[leaf]
    return None
