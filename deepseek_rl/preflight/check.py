"""The preflight check: will this recipe run on this launch and this hardware? Answered before any weight loads.

`deepseek-rl check --config-name RECIPE` (check_cli.py) and the start of `train` run it. It composes nothing itself:
it takes a validated Config, a Launch (from an accelerate config file, or from the environment accelerate launch
sets) and the device memory (given, or detected), and returns a Report:
- how the batch divides: world size, prompts and groups per rank, micro-batches = gradient accumulation steps;
- the model's parameters, counted exactly on the meta device from config.json (no weights);
- the memory per device, term by term (memory.py; formulas in docs/preflight.md), per phase against the budget
  (device memory x HEADROOM: the rest is kept for the CUDA context, NCCL buffers and fragmentation);
- tokens per step;
- problems, each with its fix: batch divisibility, bf16/fp16 weights without an fp32 master copy (updates of a
  small learning rate round away), and every phase that does not fit, with the number of GPUs, micro-batch size or
  evaluation batch that would fit.
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from deepseek_rl.config.schema import Config
from deepseek_rl.errors import ConfigError
from deepseek_rl.preflight.memory import (
    GB,
    HEADROOM,
    Launch,
    MemoryEstimate,
    ModelShape,
    Workload,
    estimate_memory,
    vllm_kv_sequences,
)
from deepseek_rl.preflight.report import describe

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Problem:
    what: str
    fix: str
    # The first fix as config values and/or a launch, for the combined line (`combined_fix`); None: no such fix.
    overrides: dict[str, Any] | None = None
    launch: Launch | None = None


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    estimate: MemoryEstimate | None = None
    shape: ModelShape | None = None
    combined: str | None = None  # one command line with every fix, re-checked (or why there is none)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        verdict = ["verdict: OK"] if self.ok else [f"verdict: {len(self.problems)} problem(s)"]
        for i, problem in enumerate(self.problems, 1):
            verdict += [f"  {i}. {problem.what}", f"     fix: {problem.fix}"]
        if self.combined:
            verdict += ["", self.combined]
        return "\n".join(self.lines + [""] + verdict)


def launch_from_file(path: str | Path, num_processes: int | None = None, mixed_precision: str | None = None) -> Launch:
    """The Launch an accelerate config file describes (command-line overrides as accelerate takes them)."""
    import yaml

    doc = yaml.safe_load(Path(path).read_text()) or {}
    kind = str(doc.get("distributed_type", "NO")).upper()
    world = int(num_processes or doc.get("num_processes", 1))
    precision = str(mixed_precision or doc.get("mixed_precision", "no")).lower()
    ds, fsdp = doc.get("deepspeed_config") or {}, doc.get("fsdp_config") or {}
    if kind == "DEEPSPEED":
        return Launch(
            "deepspeed",
            world,
            int(ds.get("zero_stage", 0)),
            offload_optimizer=str(ds.get("offload_optimizer_device", "none")) not in ("none", "None"),
            offload_params=str(ds.get("offload_param_device", "none")) not in ("none", "None"),
            mixed_precision=precision,
            source=str(path),
        )
    if kind == "FSDP":
        offload = bool(fsdp.get("fsdp_offload_params", False))
        return Launch("fsdp", world, 0, offload, offload, precision, str(path))
    return Launch("ddp" if world > 1 else "single", world, mixed_precision=precision, source=str(path))


def launch_from_env(env: dict[str, str] | None = None) -> Launch:
    """The Launch of this process, from the variables `accelerate launch` sets (one process without them)."""
    env = dict(os.environ if env is None else env)
    world = int(env.get("WORLD_SIZE", "1"))
    precision = env.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    source = "accelerate launch" if "ACCELERATE_MIXED_PRECISION" in env else "one process"
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return Launch(
            "deepspeed",
            world,
            int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "0")),
            offload_optimizer=env.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none") != "none",
            offload_params=env.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none") != "none",
            mixed_precision=precision,
            source=source,
        )
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        offload = env.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true"
        return Launch("fsdp", world, 0, offload, offload, precision, source)
    return Launch("ddp" if world > 1 else "single", world, mixed_precision=precision, source=source)


def detected_device_memory() -> float | None:
    """Bytes of this process's GPU, or None without one."""
    if not torch.cuda.is_available():
        return None
    return float(torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", "0"))).total_memory)


def model_shape(cfg: Config) -> ModelShape:
    """Parameters counted on the meta device from the architecture config (config.json, or the tiny model's)."""
    from transformers import AutoModelForCausalLM

    from deepseek_rl.models.loading import model_config_only

    config = model_config_only(cfg.model)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    parameters = sum(p.numel() for p in model.parameters())
    lora = cfg.model.lora
    trainable = parameters
    if lora.enabled:
        targets = set(lora.target_modules)
        trainable = sum(
            lora.r * (module.in_features + module.out_features)
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets
        )
    heads = config.num_attention_heads
    return ModelShape(
        parameters=parameters,
        trainable=trainable,
        lora=lora.enabled,
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        intermediate=config.intermediate_size,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        vocab=config.vocab_size,
    )


def workload(cfg: Config, world_size: int, device_memory: float | None = None) -> Workload:
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


def with_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """A copy of the config with dotted keys set (values the check computed, valid by construction)."""
    out = copy.deepcopy(cfg)
    for key, value in overrides.items():
        *path, last = key.split(".")
        node = out
        for part in path:
            node = getattr(node, part)
        setattr(node, last, value)
    return out


def combined_fix(cfg: Config, launch: Launch, device_memory: float, name: str, config_dir: str | None = None) -> str:
    """Apply the first problem's fix, re-check, repeat: one command line that fits, checked before it is printed
    (or why no combination of the fixes above does)."""
    overrides: dict[str, Any] = {}
    current = launch
    for _ in range(8):
        report = check(with_overrides(cfg, overrides), current, device_memory, name, combine=False)
        if report.ok:
            assert report.estimate is not None
            phase, peak = report.estimate.peak()
            args = " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in overrides.items())
            launch_args = ""
            if current != launch or current.source.endswith(".yaml"):
                config = "launch/zero3.yaml" if current != launch and current.zero_stage == 3 else current.source
                config_arg = f" --launch-config {config}" if config.endswith(".yaml") else ""
                launch_args = (f"{config_arg} --num-processes {current.world_size}"
                               f" --mixed-precision {current.mixed_precision}")  # fmt: skip
            memory = f" --device-memory-gb {device_memory / GB:g}"
            return (f"one line that fits (re-checked: peak {peak / GB:.1f} GB in the {phase} phase, of "
                    f"{device_memory * HEADROOM / GB:.1f}):\n  deepseek-rl check"
                    f"{f' --config-dir {config_dir}' if config_dir else ''} --config-name {name}{launch_args}"
                    f"{memory} {args}".rstrip())  # fmt: skip
        problem = report.problems[0]
        changed = False
        if problem.overrides and any(overrides.get(k) != v for k, v in problem.overrides.items()):
            overrides.update(problem.overrides)
            changed = True
        if problem.launch is not None and problem.launch != current:
            current, changed = problem.launch, True
        if not changed:
            return f"no combination of the fixes above fits: after {len(overrides)} of them, {problem.what}"
    return "no combination of the fixes above fits within 8 rounds"


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


def check(
    cfg: Config,
    launch: Launch,
    device_memory: float | None,
    name: str = "",
    combine: bool = True,
    config_dir: str | None = None,
) -> Report:
    """The full preflight report of a validated config; with problems and a known device, one combined fix."""
    report = Report(problems=batch_problems(cfg, launch.world_size))
    report.shape = model_shape(cfg)
    report.estimate = estimate_memory(report.shape, launch, workload(cfg, launch.world_size, device_memory))
    report.problems += precision_problems(cfg, launch)
    budget = device_memory * HEADROOM if device_memory else None
    if budget is not None:
        report.problems += memory_problems(cfg, report.shape, launch, report.estimate, budget)
    report.lines = describe(cfg, launch, report.shape, report.estimate, device_memory, name)
    fixable = any(p.overrides or p.launch for p in report.problems)
    if combine and fixable and device_memory:
        report.combined = combined_fix(cfg, launch, device_memory, name or "RECIPE", config_dir)
    return report


def preflight_before_training(cfg: Config) -> None:
    """What `train` runs first: with a known device (a GPU), the full check; on CPU, nothing beyond the config's
    own validation. Problems stop the run (trainer.preflight=error) or are printed (warn)."""
    memory = detected_device_memory()
    if cfg.trainer.preflight == "off" or memory is None:
        return
    report = check(cfg, launch_from_env(), memory)
    if int(os.environ.get("RANK", "0")) == 0:
        print(report.text(), file=sys.stderr)
    if not report.ok and cfg.trainer.preflight == "error":
        raise ConfigError(
            "the preflight check found problems (above); fix them, or set trainer.preflight=warn to run anyway"
        )
