"""`deepseek-rl port-trl CONFIG.yaml [--output RECIPE.yaml] [--num-processes 8]`: a TRL GRPOConfig (or open-r1
recipe) YAML in, our recipe out, with the batch arithmetic done and every key it could not map listed.

What it does, key by key: TRL's names go through the same table the errors use (config/aliases.py) with the value
conversions TRL's and ours need (scale_rewards true/false, epsilon_high defaulting to epsilon as TRL does, cispo and
sapo as policy losses, use_vllm, adam betas as a pair, warmup_ratio x max_steps, report_to); open-r1's own keys
(model_name_or_path, dataset_name, dataset_prompt_column, system_prompt, reward_funcs / reward_weights by name)
map to the model, data and reward keys. The batch: TRL's optimizer step takes per_device_train_batch_size x
processes x gradient_accumulation_steps completions, which is our trainer.batch_size (per_device_train_batch_size is
our micro-batch); prompts per step = batch_size / num_generations. The recipe lists every key itself (defaults:
the schema and _common only), so it shows everything it runs; its header lists what was not mapped, and why.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from deepseek_rl.config.aliases import TRL
from deepseek_rl.errors import ConfigError

# open-r1's reward names -> ours (None: no equivalent)
OPEN_R1_REWARDS = {
    "accuracy": "accuracy", "format": "think_format", "tag_count": "tag_count", "reasoning_steps": "reasoning_steps",
    "cosine": "cosine", "repetition_penalty": "repetition", "code": "code", "binary_code": "binary_code",
    "soft_overlong_punishment": "soft_overlong", "length": None, "ioi_code": None, "cf_code": None,
    "code_format": None,
}  # fmt: skip
SCHEDULES = {"constant": "constant", "constant_with_warmup": "constant", "linear": "linear", "cosine": "cosine",
             "cosine_with_min_lr": "cosine"}  # fmt: skip
IGNORED = {  # keys that do not change what is trained, or that the launcher owns
    "logging_steps", "logging_strategy", "logging_first_step", "do_eval", "eval_strategy", "push_to_hub",
    "hub_model_id", "hub_strategy", "overwrite_output_dir", "save_strategy", "log_level", "use_liger_kernel",
    "ddp_timeout", "torch_compile", "dataloader_num_workers", "remove_unused_columns", "callbacks", "benchmarks",
    "wandb_entity", "wandb_project", "attn_implementation",
}  # fmt: skip


def number(value: Any) -> Any:
    """YAML 1.1 reads `1e-6` (no dot) as a string: numbers back to numbers."""
    if isinstance(value, str):
        try:
            return int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            return value
    return value


def set_key(recipe: dict[str, Any], key: str, value: Any) -> None:
    value = number(value)
    node = recipe
    *path, last = key.split(".")
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


def port(source: dict[str, Any], processes: int) -> tuple[dict[str, Any], list[str], list[str]]:
    """(recipe, notes on how the batch and special keys were mapped, keys not mapped with why)."""
    src = {k: number(v) for k, v in source.items()}
    recipe: dict[str, Any] = {"defaults": ["deepseek_rl_schema", "_common", "_self_"], "stages": ["grpo"]}
    notes, unmapped = [], []
    take = src.pop

    def put(key: str, value: Any) -> None:
        set_key(recipe, key, value)

    # model and data (open-r1's ScriptArguments / ModelConfig)
    if "model_name_or_path" in src:
        put("model.path", take("model_name_or_path"))
        put("model.tokenizer", None)
    dtype = (take("model_init_kwargs", None) or {}).get("torch_dtype") or take("torch_dtype", None)
    put("model.dtype", "float32" if dtype in (None, "auto", "float32") else str(dtype))
    if "dataset_name" in src:
        put("data.task", None)
        put("data.hub_name", take("dataset_name"))
        pairs = (("dataset_config", "data.hub_subset"), ("dataset_train_split", "data.train_split"),
                 ("dataset_test_split", "data.eval_split"), ("dataset_prompt_column", "data.prompt_column"))
        for theirs, ours in pairs:
            if theirs in src:
                put(ours, take(theirs))
    if "system_prompt" in src:
        put("data.system_prompt", take("system_prompt"))
    if "system_prompt" in source or "chat_template" in src:
        put("data.template", "chat")
    # batch arithmetic
    per_device = int(take("per_device_train_batch_size", 8))
    accumulation = int(take("gradient_accumulation_steps", 1))
    generations = int(take("num_generations", 8))
    steps_per_generation = take("steps_per_generation", None)
    if "generation_batch_size" in src and int(take("generation_batch_size")) != per_device * processes * accumulation:
        unmapped.append("generation_batch_size: one generation per optimizer step here (trainer.batch_size)")
    batch = per_device * processes * accumulation
    put("trainer.micro_batch_size", per_device)
    put("trainer.batch_size", batch)
    put("algorithm.num_generations", generations)
    notes.append(f"trainer.batch_size {batch} = per_device_train_batch_size {per_device} x {processes} processes x "
                 f"gradient_accumulation_steps {accumulation}; {batch / generations:g} prompts per step")  # fmt: skip
    if batch % generations:
        unmapped.append(f"num_generations={generations}: does not divide the {batch} completions of a step")
    if steps_per_generation not in (None, accumulation):
        unmapped.append(f"steps_per_generation={steps_per_generation}: one rollout batch gives one optimizer step per "
                        "pass here (algorithm.num_iterations)")  # fmt: skip
    # algorithm
    loss_type = take("loss_type", "dapo")
    if loss_type in ("cispo", "sapo"):
        put("algorithm.policy_loss", loss_type)
        put("algorithm.loss_type", "dapo" if loss_type == "cispo" else "grpo")
    elif loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"):
        put("algorithm.loss_type", loss_type)
    else:
        unmapped.append(f"loss_type={loss_type}: no equivalent (grpo, bnpo, dr_grpo, dapo, cispo, sapo)")
    epsilon = float(take("epsilon", 0.2))
    epsilon_high = float(take("epsilon_high", None) or epsilon)  # TRL: epsilon_high defaults to epsilon
    put("algorithm.clip_eps_low", epsilon)
    put("algorithm.clip_eps_high", epsilon_high - 1 if loss_type == "cispo" else epsilon_high)
    if loss_type == "cispo":
        notes.append(f"cispo: TRL's epsilon_high {epsilon_high:g} is the cap on the ratio: clip_eps_high = cap - 1")
    scale = take("scale_rewards", "group")
    put("algorithm.scale_rewards", {True: "group", False: "none", "true": "group", "false": "none"}.get(scale, scale))
    top_k = take("top_k", None)
    put("rollout.top_k", 0 if top_k in (None, -1) else int(top_k))
    if take("use_vllm", False):
        put("rollout.engine", "vllm")
        if take("vllm_enable_sleep_mode", False):
            put("rollout.vllm.sleep_level", 1)
    else:
        put("rollout.engine", "builtin")
    if "adam_beta1" in src or "adam_beta2" in src:
        put("optimizer.betas", [float(take("adam_beta1", 0.9)), float(take("adam_beta2", 0.999))])
    schedule = take("lr_scheduler_type", "linear")
    put("optimizer.schedule", SCHEDULES.get(schedule, "constant"))
    if schedule not in SCHEDULES:
        unmapped.append(f"lr_scheduler_type={schedule}: constant used (ours: constant, linear, cosine)")
    max_steps = take("max_steps", -1)
    if max_steps and max_steps > 0:
        put("trainer.max_steps", int(max_steps))
        src.pop("num_train_epochs", None)  # max_steps wins, as in TRL
    elif "num_train_epochs" in src:
        unmapped.append(f"num_train_epochs={take('num_train_epochs')}: training is counted in steps; set "
                        "trainer.max_steps = epochs x prompts / (batch_size / num_generations)")  # fmt: skip
    if "warmup_ratio" in src and max_steps and max_steps > 0:
        put("optimizer.warmup_steps", round(float(take("warmup_ratio")) * max_steps))
    if "bf16" in src and take("bf16"):
        notes.append("bf16: launch with accelerate's --mixed_precision bf16 (fp32 master weights)")
    report = take("report_to", None)
    if report is not None:
        kind = report[0] if isinstance(report, list) and report else report
        put("logger.kind", {"wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow"}.get(kind, "none"))
    if take("log_completions", False):
        put("logger.rollout_table_every", 1)
    # rewards (open-r1: names; TRL: reward_funcs are Python objects, named in the recipe only by open-r1)
    funcs = take("reward_funcs", None)
    weights = take("reward_weights", None)
    if funcs:
        names = [OPEN_R1_REWARDS.get(f, f) for f in funcs]
        weights = weights or [1.0] * len(funcs)
        mapped = {n: float(w) for f, n, w in zip(funcs, names, weights, strict=False) if n is not None}
        unmapped += [f"reward_funcs: {f}: no built-in equivalent (add yours: +reward.functions.{f}=file.py:{f})"
                     for f, n in zip(funcs, names, strict=True) if n is None]  # fmt: skip
        if mapped:
            put("reward.weights", mapped)
    # everything else through the alias table
    for key in list(src):
        value = src.pop(key)
        if key in IGNORED:
            continue
        alias = TRL.get(key)
        if alias is None or "=" in alias.ours or alias.ours in ("reward.functions", "reward.weights", "logger"):
            unmapped.append(f"{key}={value}: no equivalent key" + (f" (see {alias.ours})" if alias else ""))
            continue
        put(alias.ours, value)
    return recipe, notes, unmapped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deepseek-rl port-trl", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="a TRL GRPOConfig / open-r1 recipe YAML")
    parser.add_argument("--output", type=Path, help="write the recipe here (default: print it)")
    parser.add_argument("--num-processes", type=int, default=8, help="processes the TRL run used (default 8)")
    args = parser.parse_args(argv)
    try:
        source = yaml.safe_load(args.config.read_text()) or {}
        if not isinstance(source, dict):
            raise ConfigError(f"{args.config}: not a YAML mapping of GRPOConfig keys")
        recipe, notes, unmapped = port(source, args.num_processes)
    except (OSError, yaml.YAMLError, ConfigError, ValueError, TypeError) as err:
        print(f"deepseek-rl port-trl: {err}", file=sys.stderr)
        sys.exit(2)
    name = args.output.stem if args.output else "RECIPE"
    header = [f"# Ported from {args.config.name} by deepseek-rl port-trl ({args.num_processes} processes).",
              f"#   accelerate launch --config_file launch/zero2.yaml --num_processes {args.num_processes} "
              f"-m deepseek_rl.train --config-dir {args.output.parent if args.output else 'DIR'} --config-name {name}",
              *[f"# {n}" for n in notes]]  # fmt: skip
    header += ["# Not mapped:"] + [f"#   {u}" for u in unmapped] if unmapped else ["# Every key was mapped."]
    text = "\n".join(header) + "\n" + yaml.safe_dump(recipe, sort_keys=False)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f"deepseek-rl port-trl: wrote {args.output} ({len(unmapped)} key(s) not mapped)", file=sys.stderr)
    else:
        print(text)
