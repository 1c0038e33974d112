"""Stages run in order, each from the previous one's checkpoint: the R1 pipeline is `stages: [sft, grpo, eval]`.

    sft   cold-start supervised fine-tuning on worked traces, stopped early (sft.py)
    grpo  group-relative RL with rule-based rewards (train.py)
    rft   rejection-sampling fine-tuning on the policy's own verified samples (rft.py)
    eval  held-out evaluation of every checkpoint made so far (or of `model` alone), with a before/after table

A single stage writes into the run directory itself; several stages each write into `<run dir>/<stage>/`, and the
run directory also gets `results.json`, `results.md` (the table) and `curves.png` (GRPO's reward, held-out accuracy
and completion length over steps). Each stage is its own wandb run, grouped under the run directory's name.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from deepseek_rl.config import Config, ModelConfig
from deepseek_rl.data import build_prompt_set
from deepseek_rl.evaluate import evaluate
from deepseek_rl.models import eos_token_ids, load_model, load_tokenizer
from deepseek_rl.plots import plot_training_curves
from deepseek_rl.rollout import Sampler

LABELS = {"base": "starting model", "sft": "cold start (SFT)", "grpo": "after RL (GRPO)", "rft": "after RFT"}


def run_stages(cfg: Config, output_dir: Path) -> dict[str, Path]:
    """Run cfg.stages; returns the checkpoint directory of each training stage."""
    from deepseek_rl.rft import run_rft
    from deepseek_rl.sft import run_sft
    from deepseek_rl.train import train

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
        if stage == "sft":
            checkpoints[stage] = run_sft(stage_cfg, stage_dir)
        elif stage == "grpo":
            checkpoints[stage] = train(stage_cfg, stage_dir) / "final"
            plot_training_curves(stage_dir / "metrics.jsonl", output_dir / "curves.png")
        elif stage == "rft":
            checkpoints[stage] = run_rft(stage_cfg, stage_dir)
        elif stage == "eval":
            # the starting checkpoint too (e.g. the RL policy before RFT), but not a tiny model's random init
            models = {"base": cfg.model} if cfg.model.path is not None else {}
            models |= {name: ModelConfig(path=str(path), tokenizer=None) for name, path in checkpoints.items()}
            run_eval_stage(stage_cfg, models or {"base": model}, stage_dir, output_dir)
        if stage in checkpoints:
            model = ModelConfig(path=str(checkpoints[stage]), tokenizer=None)
    return checkpoints


def run_eval_stage(cfg: Config, models: dict[str, ModelConfig], stage_dir: Path, run_dir: Path) -> dict[str, dict]:
    """Evaluate each model on the held-out split; per-sample JSONL per model, a results table for the run."""
    results: dict[str, dict[str, float]] = {}
    stage_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for name, model_cfg in models.items():
        tokenizer = load_tokenizer(model_cfg)
        model = load_model(model_cfg, tokenizer, seed=cfg.trainer.seed).to(device)
        prompts = build_prompt_set(cfg.data, tokenizer, cfg.rollout.max_prompt_length, split="eval")
        sampler = Sampler(model, tokenizer, eos_token_ids(tokenizer, model), cfg.eval.batch_size)
        report = evaluate(sampler, prompts, cfg.eval, cfg.rollout, seed=cfg.trainer.seed, reward_args=cfg.reward.args)
        results[name] = report.metrics
        with (stage_dir / f"samples-{name}.jsonl").open("w") as f:
            for row in report.samples:
                f.write(json.dumps(row) + "\n")
    table = results_table(results)
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
