"""Stages run in order, each from the previous one's checkpoint: the R1 pipeline is `stages: [sft, grpo, eval]`.

    sft   cold-start supervised fine-tuning on worked traces, stopped early (sft.py)
    grpo  group-relative RL with rule-based rewards (grpo.py)
    rft   rejection-sampling fine-tuning on the policy's own verified samples (rft.py)
    eval  held-out evaluation of every checkpoint made so far (or of `model` alone), with a before/after table

Every stage runs in the processes the launcher started (one, or N under DDP/DeepSpeed), on the same process group.
A single stage writes into the run directory itself; several stages each write into `<run dir>/<stage>/`, and the
run directory also gets `results.json`, `results.md` (the table) and `curves.png` (GRPO's reward, held-out accuracy
and completion length over steps). Each stage is its own wandb run, grouped under the run directory's name.

A finished stage writes `<stage dir>/stage.json` (its checkpoint); with `trainer.resume=auto` a pipeline skips the
stages that finished and resumes the interrupted one from its newest checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from deepseek_rl.config.schema import Config, ModelConfig
from deepseek_rl.data.prompts import build_prompt_set
from deepseek_rl.infra.distributed import launched_world_size
from deepseek_rl.infra.plots import plot_training_curves
from deepseek_rl.models.loading import eos_token_ids, load_model, load_tokenizer
from deepseek_rl.rollout.engine import BuiltinEngine
from deepseek_rl.stages.evaluate import Shard, evaluate
from deepseek_rl.stages.grpo import RewardFunctions, train
from deepseek_rl.stages.rft import run_rft
from deepseek_rl.stages.sft import run_sft

LABELS = {"base": "starting model", "sft": "cold start (SFT)", "grpo": "after RL (GRPO)", "rft": "after RFT"}
STAGE_FILE = "stage.json"


def finished_stage(stage_dir: Path) -> Path | None:
    """The checkpoint a finished stage recorded, or None."""
    record = stage_dir / STAGE_FILE
    if not record.is_file():
        return None
    return Path(json.loads(record.read_text())["checkpoint"])


def record_stage(stage_dir: Path, stage: str, checkpoint: Path) -> None:
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / STAGE_FILE).write_text(json.dumps({"stage": stage, "checkpoint": str(checkpoint)}) + "\n")


def run_stage(stage: str, cfg: Config, stage_dir: Path, reward_funcs: RewardFunctions | None = None) -> Path:
    """One training stage; returns its HF checkpoint. `reward_funcs` (Python callables) are GRPO's extra rewards."""
    if stage == "sft":
        return run_sft(cfg, stage_dir)
    if stage == "grpo":
        return train(cfg, stage_dir, reward_funcs) / "final"
    return run_rft(cfg, stage_dir)


def run_stages(cfg: Config, output_dir: Path, reward_funcs: RewardFunctions | None = None) -> dict[str, Path]:
    """Run cfg.stages; returns the checkpoint directory of each training stage."""
    several = len(cfg.stages) > 1
    group = cfg.logger.group or (output_dir.name if several else None)
    checkpoints: dict[str, Path] = {}
    model = cfg.model
    for stage in cfg.stages:
        stage_dir = output_dir / stage if several else output_dir
        logger = replace(
            cfg.logger,
            group=group,
            name=f"{cfg.logger.name or output_dir.name}-{stage}" if several else cfg.logger.name,
        )
        stage_cfg = replace(cfg, model=model, logger=logger)
        done = finished_stage(stage_dir) if cfg.trainer.resume == "auto" and stage != "eval" else None
        if done is not None:
            print(f"deepseek-rl: stage {stage} already finished ({done}); skipping it")
            checkpoints[stage] = done
        elif stage == "eval":
            # the starting checkpoint too (e.g. the RL policy before RFT), but not a tiny model's random init
            models = {"base": cfg.model} if cfg.model.path is not None else {}
            models |= {name: ModelConfig(path=str(path), tokenizer=None) for name, path in checkpoints.items()}
            run_eval_stage(stage_cfg, models or {"base": model}, stage_dir, output_dir)
        else:
            checkpoints[stage] = run_stage(stage, stage_cfg, stage_dir, reward_funcs)
            record_stage(stage_dir, stage, checkpoints[stage])
        if stage == "grpo" and is_main_process():
            plot_training_curves(stage_dir / "metrics.jsonl", output_dir / "curves.png")
        if stage in checkpoints:
            model = ModelConfig(path=str(checkpoints[stage]), tokenizer=None)
    return checkpoints


def is_main_process() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def eval_shard() -> Shard:
    """The evaluation stage runs outside any accelerator: split it over the launched processes directly."""
    if launched_world_size() == 1 or not torch.distributed.is_initialized():
        return Shard()

    def gather(items: list) -> list:
        parts: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, items)
        return [item for part in parts for item in part]

    return Shard(torch.distributed.get_rank(), torch.distributed.get_world_size(), gather)


def eval_device() -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def run_eval_stage(cfg: Config, models: dict[str, ModelConfig], stage_dir: Path, run_dir: Path) -> dict[str, dict]:
    """Evaluate each model on the held-out split (each rank a shard of it); per-sample JSONL per model and a
    results table for the run, written by rank 0."""
    results: dict[str, dict[str, float]] = {}
    shard, main = eval_shard(), is_main_process()
    for name, model_cfg in models.items():
        tokenizer = load_tokenizer(model_cfg)
        model = load_model(model_cfg, tokenizer, seed=cfg.trainer.seed).to(eval_device())
        prompts = build_prompt_set(cfg.data, tokenizer, cfg.rollout.max_prompt_length, split="eval")
        engine = BuiltinEngine(model, tokenizer, eos_token_ids(tokenizer, model))
        report = evaluate(engine, prompts, cfg.eval, cfg.rollout, cfg.trainer.seed, cfg.reward, shard)
        results[name] = report.metrics
        if main:
            stage_dir.mkdir(parents=True, exist_ok=True)
            with (stage_dir / f"samples-{name}.jsonl").open("w") as f:
                for row in report.samples:
                    f.write(json.dumps(row) + "\n")
        del model, engine
    table = results_table(results)
    if main:
        print(table)
        (run_dir / "results.json").write_text(json.dumps(results, indent=2))
        (run_dir / "results.md").write_text(table + "\n")
    return results


def results_table(results: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per metric, one column per evaluated checkpoint."""
    names = list(results)
    metrics = list(next(iter(results.values())))
    header = "| metric | " + " | ".join(LABELS.get(n, n) for n in names) + " |"
    lines = [header, "|---|" + "---|" * len(names)]
    for metric in metrics:
        cells = " | ".join(_fmt(metric, results[n][metric]) for n in names)
        lines.append(f"| {metric.removeprefix('eval/')} | {cells} |")
    return "\n".join(lines)


def _fmt(metric: str, value: float) -> str:
    return f"{value:.1f}" if "length" in metric else f"{value:.3f}"
