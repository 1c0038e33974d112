"""The preflight check's printed report: model, launch, how the batch divides, tokens per step, memory table."""

from __future__ import annotations

from deepseek_rl.config.schema import Config
from deepseek_rl.preflight.memory import (
    GB,
    HEADROOM,
    Launch,
    MemoryEstimate,
    ModelShape,
    Term,
    Workload,
    worker_copy_bytes,
    worker_kv_bytes,
)

BACKENDS = {"single": "one process", "ddp": "DDP", "fsdp": "FSDP"}


def launch_text(launch: Launch) -> str:
    kind = BACKENDS.get(launch.backend, f"DeepSpeed ZeRO-{launch.zero_stage}")
    offload = [w for w, on in (("optimizer", launch.offload_optimizer), ("parameters", launch.offload_params)) if on]
    extra = f", {' and '.join(offload)} offloaded to CPU" if offload else ""
    precision = "fp32" if launch.mixed_precision == "no" else f"{launch.mixed_precision} mixed precision"
    source = "" if launch.source == kind else f"{launch.source}: "
    return f"{source}{kind}, {precision}{extra}, {launch.world_size} process(es)"


def batch_lines(cfg: Config, world: int) -> list[str]:
    t, g = cfg.trainer, cfg.algorithm.num_generations
    prompts = t.batch_size // g
    per_rank = t.batch_size / world
    micro = per_rank / t.micro_batch_size
    lines = [
        f"  batch     {t.batch_size} completions per step = {prompts} prompts x G={g} (a group stays on one rank)",
        f"            {world} rank(s): {prompts / world:g} prompts = {per_rank:g} completions per rank, "
        f"{micro:g} micro-batch(es) of {t.micro_batch_size} (gradient accumulation steps: {micro:g})",
    ]
    if cfg.algorithm.dynamic_sampling:
        lines.append(f"            dynamic sampling: up to {cfg.algorithm.max_sampling_rounds} extra generation rounds")
    return lines


def token_lines(cfg: Config) -> list[str]:
    b, p, c = cfg.trainer.batch_size, cfg.rollout.max_prompt_length, cfg.rollout.max_completion_length
    rounds = 1 + (cfg.algorithm.max_sampling_rounds if cfg.algorithm.dynamic_sampling else 0)
    more = f" (up to x{rounds} with dynamic sampling)" if rounds > 1 else ""
    return [
        f"  tokens    per step: generated <= {b * c:,} ({b} x {c:,}){more}; "
        f"trained <= {b * (p + c):,} ({b} x ({p:,} + {c:,}), padded)"
    ]


def model_lines(cfg: Config, shape: ModelShape) -> list[str]:
    source = cfg.model.path or f"tiny {cfg.model.arch} (tokenizer {cfg.model.tokenizer})"
    trainable = (
        f"{shape.trainable:,} trainable (LoRA r={cfg.model.lora.r})"
        if shape.lora
        else "all trainable (full fine-tuning)"
    )
    return [
        f"  model     {source}: {shape.parameters:,} parameters ({shape.parameters / 1e9:.2f} B), {trainable}",
        f"            {shape.layers} layers, hidden {shape.hidden}, MLP {shape.intermediate}, {shape.heads} heads / "
        f"{shape.kv_heads} KV heads x {shape.head_dim}, vocabulary {shape.vocab:,}; dtype {cfg.model.dtype}, "
        f"gradient checkpointing {'on' if cfg.model.gradient_checkpointing else 'off'}",
    ]


def term_line(term: Term) -> str:
    return f"    {term.name:<36} {term.bytes / GB:9.2f}   {term.formula}"


def memory_lines(est: MemoryEstimate, device_memory: float | None) -> list[str]:
    lines = ["", "  memory per device (GB = 1e9 bytes)"]
    lines += [term_line(t) for t in est.static]
    lines.append(f"    {'= static':<36} {est.static_bytes / GB:9.2f}")
    if est.beside:
        lines += [term_line(t) for t in est.beside]
        lines.append(f"    {'= static + rollout worker(s)':<36} {est.held_bytes / GB:9.2f}")
    for phase, terms in (("rollout", est.rollout), ("evaluation", est.evaluation), ("training", est.training)):
        if terms:
            lines += [term_line(t) for t in terms]
            lines.append(f"    {'= ' + phase + ' peak':<36} {est.total(phase) / GB:9.2f}   static + the lines above")
    phase, peak = est.peak()
    if device_memory:
        budget = device_memory * HEADROOM
        lines.append(
            f"    {'device budget':<36} {budget / GB:9.2f}   {device_memory / GB:.1f} GB x {HEADROOM} (the rest: "
            f"CUDA context, NCCL, fragmentation); peak {peak / GB:.1f} GB in the {phase} phase"
        )
    else:
        lines.append(f"    peak {peak / GB:.1f} GB in the {phase} phase; no device memory given or detected")
    return lines


def describe(
    cfg: Config, launch: Launch, shape: ModelShape, est: MemoryEstimate, work: Workload, name: str
) -> list[str]:
    header = f"deepseek-rl check{': ' + name if name else ''}"
    return (
        [header, f"  launch    {launch_text(launch)}"]
        + model_lines(cfg, shape)
        + batch_lines(cfg, launch.world_size)
        + token_lines(cfg)
        + rollout_side_lines(cfg, shape, launch, work)
        + memory_lines(est, work.device_memory)
    )


def rollout_side_lines(cfg: Config, shape: ModelShape, launch: Launch, work: Workload) -> list[str]:
    """Asynchronous rollouts: where the worker runs and what it holds (its own copy of the weights, the KV cache of
    the whole global batch; the trainer's phases below then have no rollout of their own to hold, and a worker
    started beside it without devices of its own counts on its first device)."""
    k = cfg.rollout.max_staleness
    if k == 0:
        return []
    server = cfg.rollout.server
    n = server.workers
    if server.url:
        where = f"the worker{'s' * (n > 1)} at {server.url}"
    else:
        where = "a worker started beside the trainer" if n == 1 else f"{n} workers started beside the trainer"
    devices = server.devices or ("the trainer's devices" if server.url is None else "their own devices")
    each = "it holds" if n == 1 else "each holds"
    rows, tokens = work.worker_rows, work.sequence
    weights, kv = worker_copy_bytes(shape, launch, work), worker_kv_bytes(shape, launch, work)
    share_of = "the global batch" if n == 1 else f"its share of the global batch (1/{n})"
    if cfg.rollout.engine == "vllm":
        share = cfg.rollout.vllm.gpu_memory_utilization
        holds = (f"{each} vLLM's reservation, rollout.vllm.gpu_memory_utilization={share} of its GPU (vLLM's "
                 f"weights and KV cache), and {weights / 1e9:.2f} GB of host memory (the copy of the weights it "
                 "receives)")  # fmt: skip
    else:
        holds = (f"{each} {weights / 1e9:.2f} GB of weights + {kv / 1e9:.2f} GB of KV cache for {share_of} "
                 f"({rows} rows x {tokens:,} tokens)")  # fmt: skip
    verb, them, their = ("samples", "it", "its") if n == 1 else ("sample", "them", "their")
    return [
        f"  rollouts  asynchronous, max_staleness={k}: {where} on {devices} {verb} step s with the policy of step "
        f"s - {k}",
        f"            {holds}; give {them} devices of {their} own "
        "(rollout.server.devices) when that does not fit beside the trainer",
    ]
