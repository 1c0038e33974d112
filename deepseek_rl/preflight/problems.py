"""The preflight check's problems, each with its fix (check.py puts them in its report): batch divisibility, half
precision without an fp32 master copy, and every phase over the memory budget with what would make it fit (more
GPUs under ZeRO-3, a smaller micro-batch, LoRA adapters, vLLM asleep or with a smaller share, a smaller evaluation
batch, a device of its own for a rollout worker started beside the trainer)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from deepseek_rl.config.schema import Config
from deepseek_rl.errors import ConfigError
from deepseek_rl.preflight.memory import (
    DTYPE_BYTES,
    GB,
    HEADROOM,
    Launch,
    MemoryEstimate,
    ModelShape,
    Workload,
    estimate_memory,
    vllm_kv_sequences,
)


@dataclass
class Problem:
    what: str
    fix: str
    # The first fix as config values and/or a launch, for the combined line (`combined_fix`); None: no such fix.
    overrides: dict[str, Any] | None = None
    launch: Launch | None = None


def workload(cfg: Config, world_size: int, device_memory: float | None = None) -> Workload:
    server, asynchronous = cfg.rollout.server, cfg.rollout.max_staleness > 0
    return Workload(
        rollout_rows=cfg.trainer.batch_size // world_size,
        micro_batch=cfg.trainer.micro_batch_size,
        prompt_length=cfg.rollout.max_prompt_length,
        completion_length=cfg.rollout.max_completion_length,
        eval_rows=cfg.eval.batch_size if cfg.eval.every > 0 and "grpo" in cfg.stages else 0,
        kl=cfg.algorithm.kl_coef > 0 or cfg.algorithm.log_kl,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        dtype_bytes=DTYPE_BYTES[cfg.model.dtype],
        # asynchronous rollouts: the worker holds the rollout engine; the trainer samples its evaluations with the
        # built-in sampler on the policy, whatever rollout.engine is
        engine="builtin" if cfg.rollout.max_staleness > 0 else cfg.rollout.engine,
        vllm_share=cfg.rollout.vllm.gpu_memory_utilization,
        vllm_sleep_level=cfg.rollout.vllm.sleep_level,
        device_memory=device_memory or 0.0,
        asynchronous=asynchronous,
        worker_engine=cfg.rollout.engine,
        worker_rows=cfg.trainer.batch_size // server.workers,
        # workers started beside the trainer without devices of their own take its first device
        workers_beside=server.workers if asynchronous and server.url is None and server.devices is None else 0,
    )


def batch_problems(cfg: Config, world: int) -> list[Problem]:
    """The batch check of the config on this world size (its message ends with the fix after the last colon)."""
    try:
        cfg.grpo_plan(world)
    except ConfigError as err:
        what, _, fix = str(err).rpartition(": ")
        return [Problem(what, fix)]
    return []


def precision_problems(cfg: Config, launch: Launch) -> list[Problem]:
    """Half-precision weights updated in place by AdamW without an fp32 master copy: small updates round away."""
    if cfg.model.dtype == "float32" or launch.fp32_master or cfg.model.lora.enabled:
        return []
    return [
        Problem(
            f"model.dtype={cfg.model.dtype} with {launch.backend} keeps no fp32 master copy: AdamW steps of "
            f"lr={cfg.algorithm.lr:g} are far below {cfg.model.dtype}'s resolution (8 bits of mantissa) and round "
            "to no change",
            "use DeepSpeed with bf16 (launch/zero2.yaml or zero3.yaml with --mixed_precision bf16: fp32 master "
            "weights), or model.dtype=float32 with --mixed_precision bf16, or LoRA adapters (model.lora.r=16: fp32)",
            overrides={"model.dtype": "float32"},
            launch=replace(launch, mixed_precision="bf16"),
        )
    ]


def gpus_that_fit(shape: ModelShape, launch: Launch, cfg: Config, budget: float) -> int | None:
    """The fewest processes under ZeRO-3 (same precision) whose rollout and training phases fit `budget`, up to 1024
    (evaluation during training is left out: its batch is eval.batch_size whatever the number of GPUs), among the
    numbers that split the step's prompts evenly."""
    prompts = cfg.trainer.batch_size // cfg.algorithm.num_generations
    start = launch.world_size + 1 if launch.shards_weights else max(2, launch.world_size)
    for n in (n for n in range(start, 1025) if prompts % n == 0):
        zero3 = replace(launch, backend="deepspeed", zero_stage=3, world_size=n)
        estimate = estimate_memory(shape, zero3, workload(cfg, n, budget / HEADROOM))
        if max(estimate.total("rollout"), estimate.total("training")) <= budget:
            return n
    return None


def memory_problems(cfg: Config, shape: ModelShape, launch: Launch, est: MemoryEstimate, budget: float) -> list:
    """Each phase over budget, with the fixes that would make it fit."""
    gb = f"the {budget / GB:.1f} GB budget"
    n = gpus_that_fit(shape, launch, cfg, budget) if est.peak()[1] > budget else None
    more_gpus = f"shard with launch/zero3.yaml across >= {n} GPUs" if n else None
    if est.static_bytes > budget:
        work = workload(cfg, launch.world_size, budget / HEADROOM)
        lora = None if shape.lora else estimate_memory(lora_shape(shape), launch, work)
        fixes = [more_gpus or "no number of GPUs fits under ZeRO-3"]
        if lora is not None and lora.peak()[1] <= budget:
            fixes.append(f"train LoRA adapters (model.lora.r=16: peak {lora.peak()[1] / GB:.1f} GB)")
        fixes.append("offload the optimizer state to CPU (launch/zero3_offload.yaml)")
        reference = " + reference model" if est.static[3].bytes else ""
        what = (
            f"weights + gradients + optimizer state{reference} take {est.static_bytes / GB:.1f} GB per device "
            f"(optimizer state {est.static[2].bytes / GB:.1f} GB) before any activation, over {gb}"
        )
        return [Problem(what, ", or ".join(fixes), launch=zero3_launch(launch, n) if n else None)]
    if est.beside and est.peak()[1] > budget:  # the first fix: the trainer's device back to itself
        workers = cfg.rollout.server.workers
        devices = ",".join(str(launch.world_size + i) for i in range(workers))
        what = (
            f"rollout worker(s) started beside the trainer share its first device "
            f"({est.beside[0].bytes / GB:.1f} GB there all along): its peak is {est.peak()[1] / GB:.1f} GB, over {gb}"
        )
        fix = (
            f"give the rollout side devices of its own: rollout.server.devices={devices} (the {workers} after the "
            f"trainer's {launch.world_size}), or start it there with `deepseek-rl serve` (rollout.server.url)"
        )
        return [Problem(what, fix, {"rollout.server.devices": devices})]
    problems = []
    if est.total("training") > budget:
        act, logits = est.training[0].bytes, est.training[1].bytes
        fixes = [] if cfg.model.gradient_checkpointing else ["set model.gradient_checkpointing=true"]
        micro = fitting_micro_batch(cfg, shape, launch, budget)
        fixes.append(f"lower trainer.micro_batch_size to {micro}" if micro else "shorten rollout.max_completion_length")
        if cfg.rollout.engine == "vllm" and cfg.rollout.vllm.sleep_level == 0:
            fixes.insert(0, "let vLLM sleep during the update (rollout.vllm.sleep_level=2)")
        what = (
            f"the training phase needs {est.total('training') / GB:.1f} GB (activations {act / GB:.1f} GB, logits "
            f"{logits / GB:.1f} GB for micro-batch {cfg.trainer.micro_batch_size}), over {gb}"
        )
        if cfg.rollout.engine == "vllm" and cfg.rollout.vllm.sleep_level == 0:
            first = {"rollout.vllm.sleep_level": 2}
        elif not cfg.model.gradient_checkpointing:
            first = {"model.gradient_checkpointing": True}
        else:
            first = {"trainer.micro_batch_size": micro} if micro else None
        fixes += [more_gpus] if more_gpus else []
        problems.append(Problem(what, ", or ".join(fixes), first, None if first else zero3_launch(launch, n)))
    if est.total("rollout") > budget and cfg.rollout.engine == "vllm":
        share = max(0.0, (budget - est.static_bytes) / (budget / HEADROOM))
        what = f"the rollout phase needs {est.total('rollout') / GB:.1f} GB (vLLM's share included), over {gb}"
        work = replace(workload(cfg, launch.world_size, budget / HEADROOM), vllm_share=share)
        holds = vllm_kv_sequences(shape, launch, work)
        rows = cfg.trainer.batch_size // launch.world_size
        if holds == 0:  # a share that fits leaves vLLM no room for one sequence: only less static memory helps
            fix = (f"{more_gpus or 'shard the weights and optimizer state (launch/zero3.yaml)'} (a vLLM share that "
                   f"fits beside the static {est.static_bytes / GB:.1f} GB, {share:.2f}, leaves its KV cache no room "
                   f"for one sequence of {work.sequence:,} tokens)")  # fmt: skip
            problems.append(Problem(what, fix, launch=zero3_launch(launch, n)))
        else:
            fix = (f"lower rollout.vllm.gpu_memory_utilization to {share:.2f} (its KV cache then holds {holds:,} "
                   f"sequences of {work.sequence:,} tokens, for {rows} rows per rank)")  # fmt: skip
            problems.append(Problem(what, fix, {"rollout.vllm.gpu_memory_utilization": round(share - 0.005, 2)}))
    elif est.total("rollout") > budget:
        kv = est.rollout[-1]
        fixes = [more_gpus or "use more GPUs (fewer rows per rank)", "lower trainer.batch_size"]
        what = (
            f"the rollout phase needs {est.total('rollout') / GB:.1f} GB (KV cache {kv.bytes / GB:.1f} GB), over {gb}"
        )
        fixes.append("shorten rollout.max_completion_length")
        problems.append(Problem(what, ", or ".join(fixes), launch=zero3_launch(launch, n)))
    if est.evaluation and est.total("evaluation") > budget and cfg.rollout.engine == "builtin":
        rows = cfg.eval.batch_size
        while rows > 1 and est_eval(shape, launch, cfg, rows, budget) > budget:
            rows //= 2
        what = (
            f"evaluation during training needs {est.total('evaluation') / GB:.1f} GB (KV cache of "
            f"eval.batch_size={cfg.eval.batch_size} rows), over {gb}"
        )
        problems.append(Problem(what, f"set eval.batch_size={rows}", {"eval.batch_size": rows}))
    return problems


def zero3_launch(launch: Launch, n: int | None) -> Launch | None:
    if not n:
        return None
    return replace(launch, backend="deepspeed", zero_stage=3, world_size=n, source="launch/zero3.yaml")


def lora_shape(shape: ModelShape, r: int = 16) -> ModelShape:
    """The shape with rank-r adapters on every attention and MLP projection (for the LoRA suggestion)."""
    h, kv = shape.hidden, shape.kv_heads * shape.head_dim
    q = shape.heads * shape.head_dim
    per_layer = r * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + shape.intermediate) + (shape.intermediate + h))
    return replace(shape, trainable=shape.layers * per_layer, lora=True)


def est_eval(shape: ModelShape, launch: Launch, cfg: Config, rows: int, budget: float) -> float:
    work = replace(workload(cfg, launch.world_size, budget / HEADROOM), eval_rows=rows)
    return estimate_memory(shape, launch, work).total("evaluation")


def fitting_micro_batch(cfg: Config, shape: ModelShape, launch: Launch, budget: float) -> int | None:
    """The largest micro-batch size that divides the rank's rows and whose training phase fits."""
    rows = cfg.trainer.batch_size // launch.world_size
    for m in sorted((d for d in range(1, rows + 1) if rows % d == 0), reverse=True):
        work = replace(workload(cfg, launch.world_size, budget / HEADROOM), micro_batch=m)
        if m < cfg.trainer.micro_batch_size and estimate_memory(shape, launch, work).total("training") <= budget:
            return m
    return None
