"""The control for RL: more imitation with RL's budget, from the same cold start, evaluated the same way.

A skeptic's question about any RL gain: would the same compute spent on more SFT have done as well? The `control`
stage answers it inside the pipeline. After `sft` (the cold start) and `grpo` (RL from it), it continues SFT from the
cold-start checkpoint on the same demonstrations, with the cold start's settings (sft.lr, batch, warmup; no early
stop), once per budget in `control.budgets`:

    time     as many training seconds as the GRPO stage's steps took (rollouts, rewards and updates; held-out
             evaluations excluded on both sides: `train/seconds` in each metrics.jsonl)
    tokens   as many trained completion tokens as the GRPO stage's loss counted (`train/tokens`)

Held-out evaluation runs at `control.evaluations` equal shares of the budget with GRPO's during-training settings, so
both curves land on one axis (`train/seconds`); the eval stage then evaluates each control's checkpoint beside the
cold start and RL. Each control writes into `<run dir>/control_<budget>/`.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

from deepseek_rl.config.schema import Config
from deepseek_rl.data.prompts import build_prompt_set
from deepseek_rl.errors import ConfigError
from deepseek_rl.stages.evaluate import HeldOutEval, shard_of
from deepseek_rl.stages.finetune import Budget, FineTuner, FineTuneSpec
from deepseek_rl.stages.sft import sft_examples

LABELS = {"time": "more SFT, same time", "tokens": "more SFT, same tokens"}


def rl_budget(grpo_dir: Path) -> dict[str, float]:
    """The GRPO stage's training seconds and tokens, from the last line of its metrics.jsonl that has them."""
    lines = [json.loads(line) for line in (grpo_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    spent = [line for line in lines if "train/seconds" in line]
    if not spent:
        raise ConfigError(f"the control needs the GRPO stage's budget: {grpo_dir}/metrics.jsonl has no train/seconds")
    return {"time": spent[-1]["train/seconds"], "tokens": spent[-1]["train/tokens"]}


def run_control(cfg: Config, kind: str, stage_dir: Path, grpo_dir: Path) -> Path:
    """SFT from `cfg.model` (the cold start) until the GRPO stage's `kind` budget is spent; returns the HF export."""
    spent = rl_budget(grpo_dir)
    budget = Budget(seconds=spent["time"]) if kind == "time" else Budget(tokens=spent["tokens"])
    # no step limit of its own: the budget stops it (max_steps is only a guard against a budget never spent)
    sft = replace(cfg.sft, max_steps=10**7, stop_accuracy=None, eval_every=1)
    cfg = replace(cfg, sft=sft)
    tuner = FineTuner(cfg, FineTuneSpec.of(cfg, "sft"), stage_dir)
    examples = sft_examples(cfg, tuner.tokenizer)
    settings = cfg.eval.during_training()
    held_out = build_prompt_set(cfg.data, tuner.tokenizer, cfg.rollout.max_prompt_length, split="eval")
    prompts = held_out.subset(settings.num_prompts)
    evaluator = HeldOutEval(prompts, settings, cfg.rollout, cfg.trainer.seed, cfg.reward)
    total = spent[kind]
    done = [math.floor(share(tuner, kind, total) * cfg.control.evaluations)]  # evaluations already logged

    def check(step: int) -> bool:
        """Every step: a held-out evaluation each time another share of the budget is spent; never stops."""
        reached = min(cfg.control.evaluations, math.floor(share(tuner, kind, total) * cfg.control.evaluations))
        if reached > done[0] or step == 1:
            metrics = evaluator(tuner.engine, shard_of(tuner.accelerator))
            tuner.tracker.log(step, metrics | {"train/seconds": tuner.state.train_seconds})
            done[0] = reached
        return False

    if tuner.state.step == 0:  # the cold start itself, at 0 seconds: the curve's first point, as GRPO's step 0
        tuner.tracker.log(0, evaluator(tuner.engine, shard_of(tuner.accelerator)) | {"train/seconds": 0.0})
    steps = tuner.train(examples, check, budget)
    final = tuner.finish()
    tuner.accelerator.print(
        f"deepseek-rl: control ({LABELS[kind]}) ran {steps} SFT steps, {tuner.state.train_seconds:.1f} s and "
        f"{tuner.state.train_tokens:,.0f} tokens (RL: {spent['time']:.1f} s, {spent['tokens']:,.0f} tokens)"
    )
    return final


def share(tuner: FineTuner, kind: str, total: float) -> float:
    """The share of the budget spent so far."""
    used = tuner.state.train_seconds if kind == "time" else tuner.state.train_tokens
    return used / max(total, 1e-9)
