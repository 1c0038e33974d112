"""The preflight check: will this recipe run on this launch and this hardware? Answered before any weight loads.

`deepseek-rl check --config-name RECIPE` (check_cli.py) and the start of `train` run it. It composes nothing itself:
it takes a validated Config, a Launch (from an accelerate config file, or from the environment accelerate launch
sets) and the device memory (given, or detected), and returns a Report:
- how the batch divides: world size, prompts and groups per rank, micro-batches = gradient accumulation steps;
- the model's parameters, counted exactly on the meta device from config.json (no weights);
- the memory per device, term by term (memory.py; formulas in docs/preflight.md), per phase against the budget
  (device memory x HEADROOM: the rest is kept for the CUDA context, NCCL buffers and fragmentation);
- tokens per step;
- problems, each with its fix (problems.py): batch divisibility, bf16/fp16 weights without an fp32 master copy
  (updates of a small learning rate round away), and every phase that does not fit, with the number of GPUs,
  micro-batch size or evaluation batch that would fit;
- one command line with every fix, re-checked: the launch and the overrides given, then the fixes.
"""

from __future__ import annotations

import copy
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deepseek_rl.config.schema import Config
from deepseek_rl.errors import ConfigError
from deepseek_rl.preflight.memory import GB, HEADROOM, Launch, MemoryEstimate, ModelShape, estimate_memory
from deepseek_rl.preflight.problems import Problem, batch_problems, memory_problems, precision_problems, workload
from deepseek_rl.preflight.report import describe


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


def combined_fix(
    cfg: Config,
    launch: Launch,
    device_memory: float,
    name: str,
    config_dir: str | None = None,
    given: Sequence[str] = (),
) -> str:
    """Apply the first problem's fix, re-check, repeat: one command line that fits, checked before it is printed
    (or why no combination of the fixes above does). The line is the whole check it re-ran: the launch, and the
    overrides `given` on the command line (those a fix sets replaced) before the fixes."""
    overrides: dict[str, Any] = {}
    current = launch
    for _ in range(8):
        report = check(with_overrides(cfg, overrides), current, device_memory, name, combine=False)
        if report.ok:
            assert report.estimate is not None
            phase, peak = report.estimate.peak()
            fixes = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in overrides.items()]
            kept = [o for o in given if o.partition("=")[0].lstrip("+~") not in overrides]
            words = ["deepseek-rl", "check", *(["--config-dir", config_dir] if config_dir else []),
                     "--config-name", name, *launch_words(launch, current),
                     "--device-memory-gb", f"{device_memory / GB:g}", *kept, *fixes]  # fmt: skip
            return (f"one line that fits (re-checked: peak {peak / GB:.1f} GB in the {phase} phase, of "
                    f"{device_memory * HEADROOM / GB:.1f}):\n  {shlex.join(words)}")  # fmt: skip
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


def launch_words(given: Launch, current: Launch) -> list[str]:
    """The check's launch options for `current` (the launch given, or the one a fix chose)."""
    words = []
    if current != given and current.zero_stage == 3:
        words += ["--launch-config", "launch/zero3.yaml"]
    elif current.source.endswith(".yaml"):
        words += ["--launch-config", current.source]
    if words or current.world_size > 1:
        words += ["--num-processes", str(current.world_size)]
    if words or current.mixed_precision != "no":
        words += ["--mixed-precision", current.mixed_precision]
    return words


def check(
    cfg: Config,
    launch: Launch,
    device_memory: float | None,
    name: str = "",
    combine: bool = True,
    config_dir: str | None = None,
    given: Sequence[str] = (),
) -> Report:
    """The full preflight report of a validated config; with problems and a known device, one combined fix."""
    report = Report(problems=batch_problems(cfg, launch.world_size))
    report.shape = model_shape(cfg)
    work = workload(cfg, launch.world_size, device_memory)
    report.estimate = estimate_memory(report.shape, launch, work)
    report.problems += precision_problems(cfg, launch)
    budget = device_memory * HEADROOM if device_memory else None
    if budget is not None:
        report.problems += memory_problems(cfg, report.shape, launch, report.estimate, budget)
    report.lines = describe(cfg, launch, report.shape, report.estimate, work, name)
    fixable = any(p.overrides or p.launch for p in report.problems)
    if combine and fixable and device_memory:
        report.combined = combined_fix(cfg, launch, device_memory, name or "RECIPE", config_dir, given)
    return report


STOPPED = "the preflight check found problems"  # how train says its preflight stopped it (the GPU check reads it)


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
        raise ConfigError(f"{STOPPED} (above); fix them, or set trainer.preflight=warn to run anyway")
