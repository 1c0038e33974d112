"""Typed configuration: one dataclass per recipe group, registered in Hydra's ConfigStore.

Recipes in `recipes/` compose these groups (model, data, rollout, reward, algorithm, optimizer, trainer, logger).
Hydra checks key names and types while composing; `__post_init__` checks values, and `Config.__post_init__`
checks how the groups fit together. Every error is a `ConfigError` that names the key and says how to fix it, and
all of it runs before any model is loaded. Below the entry point code receives these dataclasses, never a DictConfig.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from deepseek_rl.config.checks import one_of, require
from deepseek_rl.config.data import DataConfig
from deepseek_rl.config.lora import LoraConfig
from deepseek_rl.config.plan import BatchPlan, grpo_plan
from deepseek_rl.config.reward import RewardConfig
from deepseek_rl.config.rollout import RolloutConfig
from deepseek_rl.config.stages import ControlConfig, EvalConfig, RFTConfig, SFTConfig
from deepseek_rl.errors import ConfigError


@dataclass
class ModelConfig:
    # A local Hugging Face model directory or a Hub id (owner/name; needs network or the local HF cache).
    # None: build a tiny randomly initialised model from the fields below.
    path: str | None = None
    # "char" (built-in character tokenizer; "char_chat": the same with a chat template), a local tokenizer directory
    # or a Hub id. None: the tokenizer of `path`.
    tokenizer: str | None = "char"
    # Tiny-model architecture (only used when path is None).
    arch: str = "llama"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 256
    tie_word_embeddings: bool = True
    # Parameter dtype of the policy (and reference model).
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    # Recompute each decoder layer's activations in the backward pass (keeps only layer inputs: far less memory).
    gradient_checkpointing: bool = False
    # PEFT LoRA adapters instead of full fine-tuning (model.lora.r > 0 turns it on; see docs/recipes.md).
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        one_of("model.arch", self.arch, ("llama", "qwen2"))
        one_of("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        require(
            self.path is not None or self.tokenizer is not None,
            "model.tokenizer=null needs model.path: a tiny model has no tokenizer of its own; "
            "set model.tokenizer=char or a tokenizer directory",
        )
        if self.path is None:
            require(
                self.hidden_size % self.num_heads == 0,
                f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads={self.num_heads}",
            )
            require(
                self.num_heads % self.num_kv_heads == 0,
                f"model.num_heads={self.num_heads} is not divisible by model.num_kv_heads={self.num_kv_heads}",
            )


@dataclass
class AlgorithmConfig:
    # G: completions sampled per prompt; advantages are computed within each group of G.
    num_generations: int = 8
    # Peak learning rate of the policy optimizer (the step size is part of the RL algorithm's recipe).
    lr: float = 3e-5
    # How per-token losses become one number: grpo | bnpo | dr_grpo | dapo (see docs/algorithms.md).
    loss_type: str = "dapo"
    # Advantage scaling: group (divide by the group's std), batch (by the batch std), none (Dr. GRPO).
    scale_rewards: str = "group"
    adv_eps: float = 1e-4
    # Clipped surrogate: ratio clipped to [1 - clip_eps_low, 1 + clip_eps_high].
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    # Dual clip: cap on the ratio's contribution when the advantage is negative (null: off).
    dual_clip: float | None = None
    # token: per-token ratios (GRPO); sequence / sequence_token: GSPO's sequence-level ratio.
    importance_sampling: str = "token"
    # The policy objective per token: clip (PPO's clipped surrogate: GRPO, DAPO, GSPO) | cispo (the clipped ratio
    # min(rho, 1 + clip_eps_high), detached, weights A * log pi: MiniMax-M1) | sapo (a soft gate
    # sigmoid(tau (rho - 1)) * 4 / tau instead of the hard clip, tau per advantage sign: SAPO). docs/algorithms.md.
    policy_loss: str = "clip"
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    # The advantage estimator: grpo (group mean baseline) | rloo (leave-one-out baseline: the mean of the other G-1
    # rewards) | reinforce_pp (REINFORCE++ with baseline: group mean, then normalised over the whole global batch;
    # scale_rewards does not apply). scale_rewards divides grpo's and rloo's as it says.
    advantage: str = "grpo"
    # KL penalty to a frozen reference model; the reference model is built only when this is non-zero.
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    # Log `kl` (to the starting policy) even when kl_coef is 0: builds the frozen reference for the metric alone.
    log_kl: bool = False
    # Optimisation passes over each rollout batch (mu). With 1 the ratio is exactly 1.
    num_iterations: int = 1
    entropy_coef: float = 0.0
    # Truncated importance sampling against the rollout engine (vLLM): each token's policy-gradient term is weighted
    # by min(pi_trainer / pi_engine, tis_cap), the trainer's over the engine's probability of the sampled token at
    # sampling time, which corrects for the engine/trainer mismatch (null: off; needs rollout.engine=vllm).
    tis_cap: float | None = None
    # How tis_cap applies (TRL's vllm_importance_sampling_mode): token_truncate (weight min(ratio, cap), TIS) |
    # token_mask (weight ratio, 0 where ratio > cap: masked IS) | sequence_truncate / sequence_mask (the same with the
    # sequence's ratio, the product of its tokens' ratios, for every token of the sequence).
    engine_is_mode: str = "token_truncate"
    # Mask completions cut at max_completion_length out of the loss (DAPO's overlong filtering).
    mask_truncated: bool = False
    # DAPO dynamic sampling: drop groups with zero reward variance and sample more prompts, at most
    # max_sampling_rounds extra generation rounds per step.
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 3
    # Rows of the batch whose log-probs are computed at once from the logits (bounds fp32 memory).
    logprob_chunk_size: int = 4

    def __post_init__(self) -> None:
        require(
            self.num_generations >= 2,
            f"algorithm.num_generations={self.num_generations}: GRPO needs at least 2 completions per prompt for a "
            "group baseline; set algorithm.num_generations to 2 or more (8 or 16 are typical)",
        )
        require(self.lr > 0, f"algorithm.lr={self.lr} must be > 0")
        one_of("algorithm.loss_type", self.loss_type, ("grpo", "bnpo", "dr_grpo", "dapo"))
        one_of("algorithm.scale_rewards", self.scale_rewards, ("group", "batch", "none"))
        one_of("algorithm.importance_sampling", self.importance_sampling, ("token", "sequence", "sequence_token"))
        one_of("algorithm.policy_loss", self.policy_loss, ("clip", "cispo", "sapo"))
        one_of("algorithm.advantage", self.advantage, ("grpo", "rloo", "reinforce_pp"))
        one_of(
            "algorithm.engine_is_mode",
            self.engine_is_mode,
            ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask"),
        )
        require(
            self.sapo_temperature_pos > 0 and self.sapo_temperature_neg > 0,
            "algorithm.sapo_temperature_pos/neg must be > 0",
        )
        one_of("algorithm.kl_estimator", self.kl_estimator, ("k1", "k2", "k3"))
        require(self.kl_coef >= 0, f"algorithm.kl_coef={self.kl_coef} must be >= 0")
        require(self.clip_eps_low >= 0 and self.clip_eps_high >= 0, "algorithm.clip_eps_low/high must be >= 0")
        require(
            self.dual_clip is None or self.dual_clip > 1, f"algorithm.dual_clip={self.dual_clip} must be > 1 or null"
        )
        require(self.num_iterations >= 1, f"algorithm.num_iterations={self.num_iterations} must be >= 1")
        require(self.max_sampling_rounds >= 0, f"algorithm.max_sampling_rounds={self.max_sampling_rounds} must be >= 0")
        require(self.logprob_chunk_size >= 1, f"algorithm.logprob_chunk_size={self.logprob_chunk_size} must be >= 1")
        require(self.tis_cap is None or self.tis_cap >= 1, f"algorithm.tis_cap={self.tis_cap} must be >= 1 or null")


@dataclass
class OptimizerConfig:
    # AdamW; the learning rate is algorithm.lr.
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    # constant | linear | cosine decay after warmup.
    schedule: str = "constant"
    # Gradient-norm clipping (null: off).
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        require(len(self.betas) == 2, f"optimizer.betas={self.betas} must be two numbers, e.g. [0.9, 0.99]")
        one_of("optimizer.schedule", self.schedule, ("constant", "linear", "cosine"))
        require(self.warmup_steps >= 0, f"optimizer.warmup_steps={self.warmup_steps} must be >= 0")


@dataclass
class TrainerConfig:
    # Completions per optimizer step across all ranks: (prompts per step) x num_generations.
    batch_size: int = 64
    # Completions per forward/backward on one rank; the step accumulates gradients over micro-batches.
    micro_batch_size: int = 16
    # Padding-free: each micro-batch's sequences run packed into one row (position ids restarting per sequence;
    # varlen flash-attention where installed, else a block-diagonal mask), for the GRPO update, the old and reference
    # log-probs, SFT and RFT. The same losses as padded, without the FLOPs spent on padding.
    padding_free: bool = False
    # GRPO's update: fill micro-batches up to this many tokens instead of micro_batch_size rows (longest first; the
    # tokens of a packed micro-batch, or rows x the longest row when padded). Every rank runs as many micro-batches
    # as the rank that needs most. null: micro_batch_size rows. Not with DeepSpeed (its accumulation is fixed).
    max_tokens_per_micro_batch: int | None = None
    max_steps: int = 20
    seed: int = 0
    # null: Hydra's run directory.
    output_dir: str | None = None
    # Write a checkpoint every N steps (0: only the final export).
    save_every: int = 0
    keep_last: int = 2
    # never | auto (newest intact checkpoint in output_dir; a damaged newer one is moved aside and named) | a
    # checkpoint directory. With several stages, auto also skips the stages that finished.
    resume: str = "never"
    # Resume even though the config differs from the checkpoint's in keys that change the run (lr, seed,
    # num_generations, data, ...; infra/resume.py lists the keys that never count): the new values apply, the
    # optimizer takes the new learning rate. Without it such a resume stops and lists the keys.
    resume_override: bool = False
    # A new run (resume=never) in an output_dir that holds an earlier run's outputs (metrics.jsonl, checkpoints,
    # final, summary.json, finished stages) stops unless this is true; true removes those outputs first (only what
    # runs write; infra/rundir.py) and starts over there. resume=auto continues the earlier run instead.
    overwrite: bool = False
    # Save the final policy in Hugging Face format to <output_dir>/final.
    save_final: bool = True
    # The preflight check before any model loads (deepseek_rl/preflight.py): error (stop when the memory estimate
    # exceeds the detected device memory, or the precision cannot train) | warn (print and go on) | off.
    preflight: str = "error"

    def __post_init__(self) -> None:
        one_of("trainer.preflight", self.preflight, ("error", "warn", "off"))
        require(self.batch_size >= 1, f"trainer.batch_size={self.batch_size} must be >= 1")
        require(self.micro_batch_size >= 1, f"trainer.micro_batch_size={self.micro_batch_size} must be >= 1")
        require(
            self.max_tokens_per_micro_batch is None or self.max_tokens_per_micro_batch >= 1,
            f"trainer.max_tokens_per_micro_batch={self.max_tokens_per_micro_batch} must be >= 1 or null",
        )
        require(self.max_steps >= 1, f"trainer.max_steps={self.max_steps} must be >= 1")
        require(self.save_every >= 0, f"trainer.save_every={self.save_every} must be >= 0")
        require(
            not (self.overwrite and self.resume != "never"),
            f"trainer.overwrite=true starts over but trainer.resume={self.resume} continues: choose one (drop "
            "trainer.overwrite to resume, or set trainer.resume=never to start over)",
        )


@dataclass
class LoggerConfig:
    # wandb | tensorboard | mlflow | none (metrics.jsonl in the run directory is always written). TensorBoard and
    # MLflow go through accelerate's trackers (pip install tensorboard / mlflow); see infra/tracking.py.
    kind: str = "wandb"
    project: str = "deepseek-rl"
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    # auto: online when an API key is configured, offline otherwise.
    mode: str = "auto"
    tags: list[str] = field(default_factory=list)
    # MLflow's tracking URI (a server, or a local store such as sqlite:///mlflow.db); null: MLFLOW_TRACKING_URI,
    # else MLflow's default.
    tracking_uri: str | None = None
    # The run's Hydra overrides ("key=value"); filled in by `deepseek-rl train`, logged in the wandb run config and
    # summary.json. In a multirun, group and name default to the sweep and the swept values (docs/sweeps.md).
    overrides: list[str] = field(default_factory=list)
    # Every N GRPO steps (and at step 1), a table of sampled groups (prompt, G completions, reward terms, advantage,
    # length, truncated) to wandb and <run>/rollouts/{jsonl,parquet}/step_<N>.* (0: never).
    rollout_table_every: int = 10
    # Groups (one prompt with its G completions) per rollout table, the first ones of rank 0's batch.
    rollout_table_groups: int = 4
    # Metric names in the trackers: ours | trl (TRL GRPOTrainer's: rewards/<name>/mean, frac_reward_zero_std,
    # completions/mean_length, ...; infra/metric_names.py) | both. metrics.jsonl always has ours.
    metric_names: str = "ours"

    def __post_init__(self) -> None:
        one_of("logger.kind", self.kind, ("wandb", "tensorboard", "mlflow", "none"))
        packages = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",)}.get(self.kind)
        if packages is not None:
            require(
                any(importlib.util.find_spec(p) for p in packages),
                f"logger={self.kind} needs the {packages[0]} package: pip install {packages[0]} (or logger=none)",
            )
        one_of("logger.mode", self.mode, ("auto", "online", "offline", "disabled"))
        one_of("logger.metric_names", self.metric_names, ("ours", "trl", "both"))
        require(self.rollout_table_every >= 0, f"logger.rollout_table_every={self.rollout_table_every} must be >= 0")
        require(self.rollout_table_groups >= 1, f"logger.rollout_table_groups={self.rollout_table_groups} must be >= 1")


STAGES = ("sft", "grpo", "control", "rft", "eval")


@dataclass
class Config:
    # The stages to run, in order, each starting from the previous one's checkpoint: sft, grpo, rft, eval; and
    # control (after sft and grpo: more SFT from the cold start with GRPO's budget, see ControlConfig).
    stages: list[str] = field(default_factory=lambda: ["grpo"])
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rft: RFTConfig = field(default_factory=RFTConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        require(len(self.stages) > 0, "stages is empty: give at least one of sft, grpo, rft, eval")
        for stage in self.stages:
            one_of("stages", stage, STAGES)
        if "control" in self.stages:
            before = self.stages[: self.stages.index("control")]
            require(
                "sft" in before and "grpo" in before,
                "stages: control continues the cold start (sft) with the budget of the RL stage (grpo): list both "
                "before it, e.g. stages=[sft,grpo,control,eval]",
            )
        self.grpo_plan(world_size=1)
        for stage in ("sft", "rft"):
            if stage in self.stages:
                getattr(self, stage).plan(world_size=1)
        self.check_reward_names()
        self.check_lengths()
        require(
            self.algorithm.tis_cap is None or self.rollout.engine == "vllm" or self.rollout.max_staleness > 0,
            "algorithm.tis_cap corrects for the rollout engine's log-probs, which rollout.engine=vllm and asynchronous "
            "rollouts (rollout.max_staleness > 0) provide; set one of them, or algorithm.tis_cap=null",
        )
        workers, prompts = self.rollout.server.workers, self.trainer.batch_size // self.algorithm.num_generations
        require(
            self.rollout.max_staleness == 0 or prompts % workers == 0,
            f"trainer.batch_size={self.trainer.batch_size} gives {prompts} prompts per step, which do not split "
            f"evenly over rollout.server.workers={workers} rollout workers: use a multiple of "
            f"{workers * self.algorithm.num_generations}, or another number of workers",
        )
        require(
            "grpo" not in self.stages or self.rollout.temperature > 0,
            "rollout.temperature=0 is greedy decoding; GRPO needs sampled groups: set rollout.temperature > 0",
        )

    def check_reward_names(self) -> None:
        """eval.correctness, eval.format_reward and rft.verifiers name rewards of the table, reward.functions or
        reward.models."""
        from deepseek_rl.rewards import resolve_reward

        named = {"eval.correctness": [self.eval.correctness], "rft.verifiers": list(self.rft.verifiers)}
        named["eval.format_reward"] = [self.eval.format_reward] if self.eval.format_reward is not None else []
        for key, names in named.items():
            for name in names:
                if name in self.reward.models:
                    continue
                try:
                    resolve_reward(name, self.reward.functions)
                except ConfigError as err:
                    raise ConfigError(f"{key}={name}: {str(err).split(': ', 1)[-1]}") from err

    def grpo_plan(self, world_size: int) -> BatchPlan:
        """The GRPO step's batch plan on `world_size` ranks (ConfigError when the batch does not divide)."""
        t, alg = self.trainer, self.algorithm
        return grpo_plan(
            t.batch_size, t.micro_batch_size, alg.num_generations, alg.num_iterations, t.max_steps, world_size
        )

    def rollout_plan(self, workers: int) -> BatchPlan:
        """The plan of `workers` rollout workers, each sampling as one rank of a synchronous run would (they do not
        micro-batch: the micro-batch is a worker's whole share)."""
        t, alg = self.trainer, self.algorithm
        share = t.batch_size // workers
        return grpo_plan(t.batch_size, share, alg.num_generations, alg.num_iterations, t.max_steps, workers)

    def check_lengths(self) -> None:
        """Prompt + completion must fit the model's context."""
        context = model_context_length(self.model)
        total = self.rollout.max_prompt_length + self.rollout.max_completion_length
        require(
            total <= context,
            f"rollout.max_prompt_length + rollout.max_completion_length = {total} does not fit the model's context "
            f"of {context} tokens (max_position_embeddings): shorten them"
            + (", or raise model.max_position_embeddings" if self.model.path is None else ""),
        )


def model_context_length(model: ModelConfig) -> int:
    """The model's max_position_embeddings, read from config.json (local or Hub) without loading weights."""
    if model.path is None:
        return model.max_position_embeddings
    from deepseek_rl.hub import load_model_config

    return int(getattr(load_model_config(model.path), "max_position_embeddings", 2048))
